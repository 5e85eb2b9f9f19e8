"""Checking an adapter against the loaded model: where each module goes, family mismatches, leftovers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loraprompt.diagnostics import Diagnostic

if TYPE_CHECKING:
    from loraprompt.adapters.types import Adapter
    from loraprompt.keymaps import KeyMap, Target

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
SHOWN_KEYS = 5


@dataclass(frozen=True)
class AdapterMapping:
    """lora_key -> (component, Target) for the modules that map, and the lora_keys that do not."""

    mapped: dict[str, tuple[str, Target]]
    unmapped: tuple[str, ...]


def map_adapter(adapter: Adapter, keymaps: Mapping[str, KeyMap]) -> AdapterMapping:
    """Resolve every module of `adapter` against the loaded components' key maps."""
    mapped: dict[str, tuple[str, Target]] = {}
    unmapped: list[str] = []
    for key, mod in sorted(adapter.modules.items()):
        keymap = keymaps.get(mod.component)
        target = keymap.lookup(mod.path) if keymap is not None else None
        if target is None:
            unmapped.append(key)
        else:
            mapped[key] = (mod.component, target)
    return AdapterMapping(mapped, tuple(unmapped))


def _misfits(adapter: Adapter, keymaps: Mapping[str, KeyMap], result: AdapterMapping) -> list[str]:
    """Mapped modules whose tensors cannot fit their target weight (shape known from the key map)."""
    out = []
    for key, (component, target) in result.mapped.items():
        shape = keymaps[component].shape(target)
        if shape is not None and not adapter.modules[key].fits(shape):
            out.append(key)
    return out


def model_family(keymaps: Mapping[str, KeyMap]) -> str | None:
    """The loaded model's family: the UNet's verdict first, then the text encoders'."""
    order = ("unet", "text_encoder_2", "text_encoder")
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
    if not result.mapped:
        fam = f" (made for {FAMILY_NAMES[adapter.family]})" if adapter.family else ""
        return [Diagnostic("lora-no-match", f"none of the {total} modules{fam} match the loaded model (first: {first})", severity="error", subject=subject, data=data)]
    return [Diagnostic("lora-unmapped", f"{len(result.unmapped)} of {total} modules match nothing in the loaded model (first: {first})", subject=subject, data=data)]
