"""Checking an adapter against the loaded model: where each module goes, family mismatches, leftovers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loraprompt.diagnostics import Diagnostic

if TYPE_CHECKING:
    from loraprompt.adapters.types import Adapter
    from loraprompt.keymaps import KeyMap, Target

from loraprompt.keymaps.family import FAMILY_NAMES

SHOWN_KEYS = 5


@dataclass(frozen=True)
class AdapterMapping:
    """lora_key -> (component, Target) for the modules that map, the lora_keys that do not, and
    lora_key -> (component, ((Target, rows of its delta), ...)) for file modules the loaded model
    holds as several modules stacked by rows."""

    mapped: dict[str, tuple[str, Target]]
    unmapped: tuple[str, ...]
    fused: dict[str, tuple[str, tuple[tuple[Target, tuple[int, int]], ...]]] = field(default_factory=dict)


def map_adapter(adapter: Adapter, keymaps: Mapping[str, KeyMap]) -> AdapterMapping:
    """Resolve every module of `adapter` against the loaded components' key maps."""
    mapped: dict[str, tuple[str, Target]] = {}
    fused: dict[str, tuple[str, tuple[tuple[Target, tuple[int, int]], ...]]] = {}
    unmapped: list[str] = []
    for key, mod in sorted(adapter.modules.items()):
        keymap = keymaps.get(mod.component)
        target = keymap.lookup(mod.path) if keymap is not None else None
        pieces = keymap.pieces(mod.path) if keymap is not None and target is None else None
        if target is not None:
            mapped[key] = (mod.component, target)
        elif pieces is not None:
            fused[key] = (mod.component, pieces)
        else:
            unmapped.append(key)
    return AdapterMapping(mapped, tuple(unmapped), fused)


def _misfits(adapter: Adapter, keymaps: Mapping[str, KeyMap], result: AdapterMapping) -> list[str]:
    """Mapped modules whose tensors cannot fit their target weight (shape known from the key map)."""
    out = []
    for key, (component, target) in result.mapped.items():
        shape = keymaps[component].shape(target)
        if shape is not None and not adapter.modules[key].fits(shape):
            out.append(key)
    for key, (component, pieces) in result.fused.items():
        shapes = [keymaps[component].shape(t) for t, _ in pieces]
        if any(s is None for s in shapes):
            continue
        rows = max(stop for _, (_, stop) in pieces)
        first = shapes[0]
        assert first is not None
        if any(s is not None and s[1:] != first[1:] for s in shapes) or not adapter.modules[key].fits((rows, *first[1:])):
            out.append(key)
    return out


def model_family(keymaps: Mapping[str, KeyMap]) -> str | None:
    """The loaded model's family: the UNet's verdict first, then the text encoders'."""
    order = ("transformer", "unet", "text_encoder_2", "text_encoder")
    for component in order:
        km = keymaps.get(component)
        if km is not None and km.family is not None:
            return km.family
    return None


def check_family(adapter: Adapter, keymaps: Mapping[str, KeyMap]) -> list[Diagnostic]:
    """Diagnostics for applying `adapter` to the loaded model: a family mismatch (error), no module
    matching at all (error), or some modules not matching (one warning with the count and the first few)."""
    loaded = model_family(keymaps)
    subject = adapter.name
    if adapter.family and loaded and adapter.family != loaded:
        return [
            Diagnostic(
                "lora-family-mismatch",
                f"this LoRA is for {FAMILY_NAMES[adapter.family]}, the loaded model is {FAMILY_NAMES[loaded]}",
                severity="error",
                subject=subject,
                data={"adapter_family": adapter.family, "model_family": loaded},
            )
        ]
    result = map_adapter(adapter, keymaps)
    total = len(adapter.modules)
    misfits = _misfits(adapter, keymaps, result)
    if misfits:
        first = ", ".join(misfits[:SHOWN_KEYS])
        data = {"misfits": len(misfits), "total": total, "first": misfits[:SHOWN_KEYS]}
        message = f"{len(misfits)} of {total} modules do not fit the loaded model's weights (first: {first})"
        return [Diagnostic("lora-shape-mismatch", message, severity="error", subject=subject, data=data)]
    if not result.unmapped:
        return []
    first = ", ".join(result.unmapped[:SHOWN_KEYS])
    data = {"unmapped": len(result.unmapped), "total": total, "first": list(result.unmapped[:SHOWN_KEYS])}
    if not result.mapped and not result.fused:
        fam = f" (made for {FAMILY_NAMES[adapter.family]})" if adapter.family else ""
        return [Diagnostic("lora-no-match", f"none of the {total} modules{fam} match the loaded model (first: {first})", severity="error", subject=subject, data=data)]
    return [Diagnostic("lora-unmapped", f"{len(result.unmapped)} of {total} modules match nothing in the loaded model (first: {first})", subject=subject, data=data)]
