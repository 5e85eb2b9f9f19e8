"""Pure planning: which weight of the loaded model gets which adapter module at which strength.

Nothing here touches a tensor's values. `resolve_adapter` maps an adapter's modules onto the model
once (key-map lookups, unmapped keys, non-finite check); `build_plan` turns resolved adapters and
their strengths at one sampling step into a `Plan`: weight key -> contributions, the value the
patcher diffs against what is applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.keymaps.dit import DIT_BY_NAME as DIT_NAMES
from loraprompt.keymaps.family import FAMILY_NAMES

if TYPE_CHECKING:
    from loraprompt.adapters.types import Adapter, AdapterModule
    from loraprompt.keymaps import KeyMap

TE_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3")

# (component, dotted module name, parameter name): one weight of the loaded model
Key = tuple[str, str, str]
# (adapter module, rows of a fused parameter or None, strength)
Contribution = tuple["AdapterModule", tuple[int, int] | None, float]
Plan = dict[Key, tuple[Contribution, ...]]
StepFn = Callable[[int, int], float]
BlockFn = Callable[[str, int, int], float]
UnetFn = Callable[[str | None], float]


@dataclass(frozen=True, eq=False)
class PlanEntry:
    """One adapter with its strengths. `te_at`/`unet_at` give them per sampling step
    (step, total_steps) when scheduled; `blocks` are static per-block UNet multipliers ("BASE",
    "IN04", "M00", "OUT03", ...; BASE scales the text encoder); `block_at(block, step, total)`,
    when given, is the whole UNet strength of a block (lbw, in/mid/out groups) and wins."""

    adapter: Adapter
    te: float = 1.0
    unet: float = 1.0
    blocks: Mapping[str, float] | None = None
    te_at: StepFn | None = None
    unet_at: StepFn | None = None
    block_at: BlockFn | None = None
    name: str | None = None

    @property
    def scheduled(self) -> bool:
        """True when the strengths depend on the sampling step."""
        return self.te_at is not None or self.unet_at is not None or self.block_at is not None

    def strengths(self, step: int | None = None, total: int | None = None) -> tuple[float, UnetFn]:
        """(te strength, block -> UNet strength) at `step` of `total` steps (static when None)."""
        s, n = (0, 1) if step is None else (step, total if total is not None else step + 1)
        te = self.te_at(s, n) if self.te_at is not None and step is not None else self.te
        unet = self.unet_at(s, n) if self.unet_at is not None and step is not None else self.unet
        blocks, block_at = self.blocks, self.block_at
        if blocks:
            te *= blocks.get("BASE", 1.0)
        if block_at is not None:
            return te, lambda block: unet if block is None else block_at(block, s, n)
        if blocks:
            return te, lambda block: unet * blocks.get(block, 1.0) if block else unet
        return te, lambda block: unet

    @property
    def label(self) -> str:
        """The name shown in messages."""
        return self.name or self.adapter.name


def as_entry(item: Any) -> PlanEntry:
    """A PlanEntry from a PlanEntry, (adapter, te, unet), (adapter, strength) or (adapter,
    activation): a LoraActivation from `loraprompt.parse`, with its strengths, start/stop,
    keyframes and block weights (`entry_for`)."""
    from loraprompt.adapters.types import Adapter
    from loraprompt.syntax.model import LoraActivation

    if isinstance(item, PlanEntry):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], LoraActivation) and isinstance(item[0], Adapter):
        return entry_for(item[1], item[0])
    if isinstance(item, tuple) and len(item) in (2, 3):
        if not isinstance(item[0], Adapter):
            raise TypeError(f"a plan entry's first item is an Adapter (loraprompt.read_adapter(path or library entry)), "
                            f"not {_brief(item[0])}")
        try:
            te = float(item[1])
            unet = float(item[2]) if len(item) == 3 else te
        except (TypeError, ValueError):
            raise TypeError(f"the strengths of {item[0].name!r} must be numbers, not {item[1:]!r}") from None
        if not (math.isfinite(te) and math.isfinite(unet)):  # NaN would be written into every weight it touches
            raise ValueError(f"the strengths of {item[0].name!r} must be finite numbers, not {item[1:]!r}")
        return PlanEntry(item[0], te, unet)
    raise TypeError(f"a plan entry is a PlanEntry or (adapter, te, unet), not {_brief(item)}")


def is_static(activation: Any) -> bool:
    """Whether a parsed LoraActivation keeps one strength for the whole generation."""
    from loraprompt.syntax import Schedule

    return (
        getattr(activation, "start", None) is None
        and getattr(activation, "stop", None) is None
        and not isinstance(activation.te, Schedule)
        and not isinstance(activation.unet, Schedule)
    )


def entry_for(activation: Any, adapter: Any) -> PlanEntry:
    """A PlanEntry following a parsed LoraActivation: strengths, start/stop, keyframes, blocks."""
    blocks = bool(getattr(activation, "blocks", None)) or bool(getattr(activation, "groups", None))
    static = is_static(activation)
    if static and not blocks:
        return PlanEntry(adapter, te=float(activation.te), unet=float(activation.unet), name=activation.name)

    def block_at(block: str, step: int, total: int) -> float:
        return float(activation.unet_at(step, total, block=block))

    if static:  # static block weights: fused, never re-synced per step
        return PlanEntry(adapter, te=float(activation.te_at(0, 1)), unet=float(activation.unet_at(0, 1)),
                         block_at=block_at, name=activation.name)
    return PlanEntry(
        adapter,
        te_at=activation.te_at,
        unet_at=activation.unet_at,
        block_at=block_at if blocks else None,
        name=activation.name,
    )


def _brief(value: Any) -> str:
    """A value named for a message: an Adapter by its name (its repr prints every tensor)."""
    from loraprompt.adapters.types import Adapter

    text = f"Adapter {value.name!r}: write (adapter, te, unet)" if isinstance(value, Adapter) else repr(value)
    return f"{type(value).__name__} ({text[:120]})"


def checked_components(components: Any, family: str | None) -> None:
    """Refuse what a Patcher cannot take by name, before it is walked (a module passed for the
    mapping raised a bare KeyError from diffusers' config; a misspelt family refused every file)."""
    if not isinstance(components, Mapping):
        raise TypeError("Patcher takes a mapping of component name -> module, e.g. {'unet': pipe.unet, "
                        f"'text_encoder': pipe.text_encoder}}, not {type(components).__name__}")
    from loraprompt.adapters.types import COMPONENTS

    for name, module in components.items():
        if name not in COMPONENTS:  # no adapter module is ever for it: its LoRA parts would never apply
            raise ValueError(f"unknown component name {name!r}; a Patcher patches {', '.join(COMPONENTS)}")
        if module is not None and not callable(getattr(module, "named_modules", None)):
            raise TypeError(f"component {name!r} is a {type(module).__name__}, not a torch nn.Module")
    if family and family not in FAMILY_NAMES:
        raise ValueError(f"family must be one of {', '.join(FAMILY_NAMES)} (or None to detect it, '' for no check), "
                         f"not {family!r}")


_BLOCK_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"(?:^|[._])input_blocks[._](\d+)"), lambda m: f"IN{int(m[1]):02d}"),
    (re.compile(r"(?:^|[._])middle_block(?:[._]|$)"), lambda m: "M00"),
    (re.compile(r"(?:^|[._])output_blocks[._](\d+)"), lambda m: f"OUT{int(m[1]):02d}"),
    (
        re.compile(r"(?:^|[._])down_blocks[._](\d+)[._](attentions|resnets|downsamplers)[._](\d+)"),
        lambda m: f"IN{3 * int(m[1]) + (3 if m[2] == 'downsamplers' else int(m[3]) + 1):02d}",
    ),
    (re.compile(r"(?:^|[._])mid_block(?:[._]|$)"), lambda m: "M00"),
    (
        re.compile(r"(?:^|[._])up_blocks[._](\d+)[._](attentions|resnets|upsamplers)[._](\d+)"),
        lambda m: f"OUT{3 * int(m[1]) + (2 if m[2] == 'upsamplers' else int(m[3])):02d}",
    ),
)


def unet_block(module_name: str) -> str | None:
    """The block-weight id (IN00..IN11, M00, OUT00..OUT11) of a UNet module, diffusers or LDM
    naming; None for modules outside the blocks (time embedding, conv_in, conv_out)."""
    for pattern, name in _BLOCK_PATTERNS:
        match = pattern.search(module_name)
        if match:
            return name(match)
    return None


@dataclass
class SyncReport:
    """What one sync did: diagnostics (one line per adapter), how many weights it wrote, how many
    are patched now, the adapters it skipped (on_error="skip"), how many modules run a scheduled
    LoRA unfused (in their forward), and the bytes of backups held on a GPU ("device") and in
    CPU memory ("host"), the path each patched weight takes ("in place (bfloat16)",
    "fp8 requantized (float8_e4m3fn)", "unfused (nf4)": `loraprompt.quantized`), and how many
    low-rank factor sets were made rather than reused from the cache."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    written: int = 0
    patched: int = 0
    skipped: list[str] = field(default_factory=list)
    unfused: int = 0
    backups: dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0})
    paths: dict[str, str] = field(default_factory=dict)  # patched weight -> how (loraprompt.quantized)
    factors_built: int = 0  # LoRA factor sets made, not found in the patcher's cache (a switch that reuses them makes 0)


@dataclass(eq=False)
class Resolution:
    """An adapter mapped onto the loaded model: (module, key, rows, block) per mapped module."""

    adapter: Adapter
    items: list[tuple[AdapterModule, Key, tuple[int, int] | None, str | None]]
    unmapped: tuple[str, ...] = ()
    diagnostics: list[Diagnostic] = field(default_factory=list)


def _finite(modules: Iterable[AdapterModule]) -> AdapterModule | None:
    """The first module with NaN/inf in its tensors or alpha, or None. Done once per adapter when
    it is resolved, on the CPU where the reader leaves tensors; tensors on a GPU are read back in
    one copy per device, never one host-device synchronisation per module."""
    import torch

    from loraprompt.adapters.finite import finite_flag

    flags: dict[torch.device, list[tuple[AdapterModule, Any]]] = {}
    for module in modules:
        if module.alpha is not None and not math.isfinite(module.alpha):
            return module
        tensors = list(module.tensors.values())
        if module.dora_scale is not None:
            tensors.append(module.dora_scale)
        for t in tensors:
            if t.is_floating_point():
                flags.setdefault(t.device, []).append((module, finite_flag(t)))
    for found in flags.values():
        ok = torch.stack([flag for _, flag in found]).cpu().tolist()
        bad = next((module for (module, _), good in zip(found, ok) if not good), None)
        if bad is not None:
            return bad
    return None


def resolve_adapter(
    adapter: Adapter, keymaps: Mapping[str, KeyMap], family: str | None, label: str | None = None
) -> Resolution:
    """Map every module of `adapter` through the key maps; raise PatchError (FamilyMismatchError
    for a known other family) when the adapter cannot apply at all or carries NaN/inf."""
    from loraprompt.errors import FamilyMismatchError, PatchError

    label = label or adapter.name
    where = f"{label} ({adapter.path})"
    if family and adapter.family and adapter.family != family:
        raise FamilyMismatchError(
            f"{where} is a {FAMILY_NAMES.get(adapter.family, adapter.family)} adapter; the loaded "
            f"model is {FAMILY_NAMES.get(family, family)}"
        )
    items: list[tuple[AdapterModule, Key, tuple[int, int] | None, str | None]] = []
    unmapped: list[str] = []
    maps = {c: _keymap_for(c, keymaps) for c in adapter.components()}
    for lora_key, module in adapter.modules.items():
        keymap = maps[module.component]
        target = keymap.lookup(module.path) if keymap is not None else None
        pieces = keymap.pieces(module.path) if keymap is not None and target is None else None
        if target is None and pieces is None:
            unmapped.append(lora_key)
            continue
        assert keymap is not None
        if pieces is not None:
            items += _split(module, keymap.component, pieces, where)
            continue
        assert target is not None
        block = unet_block(target.module) if module.component == "unet" else None
        items.append((module, (keymap.component, target.module, target.param), target.rows, block))
    seen: dict[tuple[Key, tuple[int, int] | None], AdapterModule] = {}
    for module, key, rows, _ in items:  # two spellings of one module (a merge of two namings): never add it twice
        first = seen.setdefault((key, rows), module).extra.get("parent", seen[(key, rows)])
        if first is not module.extra.get("parent", module):
            raise PatchError(f"{where}: {first.lora_key} and {module.extra.get('parent', module).lora_key} both adapt "
                             f"{'.'.join(key)}: the file names one module twice; nothing applied")
    bad = _finite(item[0] for item in items)
    if bad is not None:
        bad = bad.extra.get("parent", bad)
        raise PatchError(f"{where}: NaN or Inf in the tensors of {bad.lora_key}; nothing applied")
    missing = _missing_components(adapter, keymaps, unmapped)
    if not items and missing is not None and len(missing.data["components"]) == len(adapter.components()):
        raise PatchError(f"{where}: {missing.message.removeprefix(adapter.name + ': ')}; wrong model family?")
    if not items and adapter.modules:
        raise PatchError(
            f"{where}: none of its {len(adapter.modules)} modules matches the loaded model "
            f"(e.g. {unmapped[0]}); wrong model family?"
        )
    diagnostics = []
    if missing:
        diagnostics.append(missing)
        unmapped = [k for k in unmapped if adapter.modules[k].component not in missing.data["components"]]
    if unmapped:
        diagnostics.append(
            Diagnostic(
                "lora-unmapped",
                f"{len(unmapped)} of {len(adapter.modules)} modules of {label} match nothing in the "
                f"loaded model (e.g. {', '.join(unmapped[:3])})",
                subject=adapter.path,
                data={"unmapped": unmapped},
            )
        )
    return Resolution(adapter, items, tuple(unmapped), diagnostics)


def _keymap_for(component: str, keymaps: Mapping[str, KeyMap]) -> KeyMap | None:
    """The key map for an adapter component; `lora_unet_…` modules of a file whose family nothing
    told are tried on a diffusion transformer when the model has no UNet."""
    found = keymaps.get(component)
    if found is None and component == "unet":
        found = keymaps.get("transformer")
    if found is None and component == "transformer":  # a single-file DiT checkpoint's diffusion_model
        unet = keymaps.get("unet")
        found = unet if unet is not None and unet.family in DIT_NAMES else None
    if found is None and component == "text_encoder_3":
        # kohya's `lora_te3_` is the T5 of SD3 (text_encoder_3) and of Flux.1 (its text_encoder_2)
        found = next((k for c, k in keymaps.items() if c in TE_COMPONENTS and is_t5(k)), None)
    return found


def is_t5(keymap: KeyMap) -> bool:
    """Whether a text encoder's key map is a T5 encoder's (`encoder.block.N.layer.0.SelfAttention.q`)."""
    return any(".SelfAttention." in t.module for t in keymap.targets.values())


def _split(module: AdapterModule, component: str, pieces: Any, where: str) -> list[tuple[AdapterModule, Key, tuple[int, int] | None, None]]:
    """One item per loaded module a fused file module's rows go to (see `adapters.slices`)."""
    from loraprompt.adapters.slices import row_slice
    from loraprompt.errors import PatchError

    total = max(stop for _, (_, stop) in pieces)
    out = []
    for target, rows in pieces:
        try:
            part = row_slice(module, rows, total)
        except ValueError as exc:
            raise PatchError(f"{where}: {exc}; nothing applied") from exc
        out.append((part, (component, target.module, target.param), target.rows, None))
    return out


_COMPONENT_WORDS = {"text_encoder_3": "a T5 text encoder", "text_encoder_2": "a second text encoder",
                    "text_encoder": "a text encoder", "transformer": "a diffusion transformer", "unet": "a UNet"}


def _missing_components(adapter: Adapter, keymaps: Mapping[str, KeyMap], unmapped: list[str]) -> Diagnostic | None:
    """One diagnostic for the modules of components the loaded model does not have (a T5 LoRA on
    a model without T5 says so instead of listing its keys as unmatched)."""
    absent = sorted(c for c in {adapter.modules[k].component for k in unmapped} if _keymap_for(c, keymaps) is None)
    if not absent:
        return None
    counts = {c: sum(1 for m in adapter.modules.values() if m.component == c) for c in absent}
    first = [k for k in unmapped if adapter.modules[k].component in absent][:3]
    words = "; ".join(f"{n} modules target {_COMPONENT_WORDS.get(c, c)} ({c})" for c, n in counts.items())
    words += f" (e.g. {', '.join(first)})"
    return Diagnostic(
        "lora-component-missing", f"{adapter.name}: {words}, which the loaded model does not have; they are not applied",
        subject=adapter.path, data={"components": absent, "counts": counts},
    )


def build_plan(resolved: Iterable[tuple[Resolution, float, UnetFn]], keep_zero: bool = False) -> Plan:
    """Group (resolution, te strength, block -> UNet strength) into weight key -> contributions,
    in entry order; zero strengths contribute nothing (unless `keep_zero`: a LoRA unfused for a
    schedule keeps its place while it is off)."""
    plan: dict[Key, list[Contribution]] = {}
    for resolution, te, unet_for in resolved:
        per_block: dict[str | None, float] = {}
        for module, key, rows, block in resolution.items:
            if module.component not in TE_COMPONENTS:  # the UNet or the diffusion transformer
                strength = per_block.get(block)
                if strength is None:
                    strength = per_block[block] = unet_for(block)
            else:
                strength = te
            if strength != 0.0 or keep_zero:
                plan.setdefault(key, []).append((module, rows, strength))
    return {key: tuple(contribs) for key, contribs in plan.items()}


def refused(entry: PlanEntry, exc: Exception) -> Diagnostic:
    """The diagnostic of an adapter refused by a sync (skipped) or by `Patcher.check`."""
    return Diagnostic("lora-refused", str(exc), severity="error", subject=entry.adapter.path)
