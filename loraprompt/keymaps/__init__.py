"""Key maps: which module of the loaded model an adapter module's `path` targets.

Contract (used by the patcher, the tools and the A1111 glue):
    keymap = build_keymap(component, module_names, param_shapes)  # names from named_modules()
    keymap = keymap_for_module(component, torch_module)            # the same, from the module
    target = keymap.lookup(path)                                   # Target | None

Roots expected per component (names relative to the module handed over; a longer root such as
`model.diffusion_model.` or `transformer.` is detected and stripped for matching):
- "unet": a diffusers `UNet2DConditionModel` (`down_blocks.…`), or A1111's
  `sd_model.model.diffusion_model` (LDM/SGM: `input_blocks.…`, `middle_block.…`, `output_blocks.…`).
- "text_encoder": a transformers `CLIPTextModel` (4.x `text_model.encoder…` or 5.x `encoder…`),
  A1111's `cond_stage_model.transformer` (SD1) / `conditioner.embedders.0.transformer` (SDXL), or
  the OpenCLIP model A1111 uses for SD2: `cond_stage_model.model` (`transformer.resblocks.N…`).
- "text_encoder_2": `CLIPTextModelWithProjection`, or A1111's `conditioner.embedders.1.model`.
- "transformer": a diffusers `SD3Transformer2DModel`, `FluxTransformer2DModel` or
  `WanTransformer3DModel`; files may name its modules natively (BFL/kohya `double_blocks.N.img_attn.qkv`,
  SAI `joint_blocks.N.x_block.attn.qkv`, Wan `blocks.N.self_attn.q`, see `keymaps.dit`). A native
  module that is several diffusers modules stacked by rows is a `fused` entry: its delta's rows
  are split over them (`KeyMap.pieces`).
- "text_encoder_3": SD3's T5 encoder (`lora_te3_…`, kohya's name for the T5 of SD3 and Flux).
Every module is reachable under the model's own name (kohya spelling: dots as underscores) and
under its counterpart in the other naming (diffusers <-> LDM/SGM, transformers 4 <-> 5,
transformers <-> OpenCLIP, where q/k/v become row slices of `in_proj_weight`). `param_shapes`
("module.param" -> shape) is needed for those row slices and for family detection.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loraprompt.keymaps import clip, dit, unet

if TYPE_CHECKING:
    from torch import nn

# anchors that locate the component's root inside a longer module name, per naming
_ANCHORS = ("input_blocks.", "down_blocks.", "text_model.encoder.", "transformer.resblocks.", "encoder.layers.",
            "double_blocks.", "joint_blocks.")
# prefixes a file may put in front of a path (A1111 internal names)
_PATH_PREFIXES = ("diffusion_model_", "model_diffusion_model_", "transformer_", "model_", "0_", "1_")


@dataclass(frozen=True)
class Target:
    """A weight of the loaded model: `module` is a dotted name from named_modules(), `param` the
    parameter to patch ("weight" unless the model fuses it, e.g. OpenCLIP's "in_proj_weight"),
    `rows` a (start, stop) slice of that parameter's first dimension when several adapter modules
    share one fused parameter (q/k/v in in_proj_weight), else None. A rows target's bias is the
    same slice of the fused bias (`in_proj_bias[start:stop]`)."""

    module: str
    param: str = "weight"
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class KeyMap:
    """Alias (kohya-spelled path) -> Target for one component of the loaded model."""

    component: str
    targets: dict[str, Target]
    family: str | None = None
    root: str = ""
    ambiguous: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # "module.param" -> shape
    fused: Mapping[str, tuple[tuple[Target, tuple[int, int]], ...]] = field(default_factory=dict)

    def pieces(self, path: str) -> tuple[tuple[Target, tuple[int, int]], ...] | None:
        """For a file module that is several loaded modules stacked by rows: (target, rows of the
        file module's delta) per loaded module, else None."""
        found = self.fused.get(path)
        if found is None:
            for prefix in _PATH_PREFIXES:
                if path.startswith(prefix) and path[len(prefix) :] in self.fused:
                    return self.fused[path[len(prefix) :]]
        return found

    def lookup(self, path: str) -> Target | None:
        """The target of a file's module path, or None when the loaded model has no such module."""
        found = self.targets.get(path)
        if found is not None:
            return found
        for prefix in _PATH_PREFIXES:
            if path.startswith(prefix):
                found = self.targets.get(path[len(prefix) :])
                if found is not None:
                    return found
        return None

    def modules(self) -> set[str]:
        return {t.module for t in self.targets.values()}

    def shape(self, target: Target) -> tuple[int, ...] | None:
        """The shape of the (sliced) weight a target names, when the key map was built with shapes."""
        shape = self.shapes.get(f"{target.module}.{target.param}")
        if shape is None or target.rows is None:
            return shape
        return (target.rows[1] - target.rows[0], *shape[1:])


def _kohya(name: str) -> str:
    return name.replace(".", "_")


def _root(names: Sequence[str]) -> str:
    for anchor in _ANCHORS:
        for n in names:
            i = n.find(anchor)
            if i == 0 or (i > 0 and n[i - 1] == "."):
                return n[:i]
    return ""


def _unet_aliases(rel: str, up_attn: set[int]) -> list[str]:
    other = unet.to_ldm(rel, up_attn) if not rel.startswith(("input_blocks", "middle_block", "output_blocks")) else unet.to_diffusers(rel)
    if other is None and rel in unet.TOP_LEVEL_LDM:
        other = unet.TOP_LEVEL_LDM[rel]
    return [rel] if other is None else [rel, other]


def _text_aliases(rel: str, full: str, shapes: Mapping[str, Sequence[int]], openclip: bool) -> list[tuple[str, Target]]:
    own = not shapes or f"{full}.weight" in shapes
    out: list[tuple[str, Target]] = [(rel, Target(full))] if own else []
    if openclip:
        fused = shapes.get(f"{full}.in_proj_weight")
        for hf, slot in clip.openclip_aliases(rel):
            if slot is None:
                target = Target(full)
            elif fused is None:
                continue
            else:
                width = fused[0] // 3
                i = clip.QKV.index(slot)
                target = Target(full, "in_proj_weight", (i * width, (i + 1) * width))
            out += [(hf, target), (hf.removeprefix("text_model."), target)]
        return out
    canonical = clip.hf_canonical(rel)
    if canonical is not None:
        out += [(canonical, Target(full)), (canonical.removeprefix("text_model."), Target(full))]
    return out


def build_keymap(component: str, module_names: Iterable[str], param_shapes: Mapping[str, Sequence[int]] | None = None) -> KeyMap:
    """Every alias a file may use for each module of one loaded component. A model still wrapped
    by PEFT (`to_q.base_layer`, `to_q.lora_A.default`) is mapped under its own module names: a
    target is the wrapped `base_layer`, and PEFT's adapter modules are no targets."""
    names = [n for n in module_names if n]
    shapes = dict(param_shapes or {})
    if not any(n.endswith(".base_layer") or ".base_layer." in n for n in names):
        return _build_keymap(component, names, shapes)
    real: dict[str, str] = {}  # module name without base_layer -> the loaded module holding the weight
    for n in names:
        if _PEFT_OWN.search(n):
            continue
        if n.endswith(".base_layer"):
            real[n.removesuffix(".base_layer")] = n  # the weight's module, not PEFT's wrapper around it
        else:
            real.setdefault(n.replace(".base_layer", ""), n)
    plain_shapes = {k.replace(".base_layer.", "."): v for k, v in shapes.items() if not _PEFT_OWN.search(k)}
    keymap = _build_keymap(component, list(real), plain_shapes)

    def loaded(target: Target) -> Target:
        return dataclasses.replace(target, module=real.get(target.module, target.module))

    return dataclasses.replace(
        keymap,
        targets={a: loaded(t) for a, t in keymap.targets.items()},
        fused={a: tuple((loaded(t), rows) for t, rows in pieces) for a, pieces in keymap.fused.items()},
        shapes={k: tuple(v) for k, v in shapes.items() if not _PEFT_OWN.search(k)},
    )


# PEFT's own modules and parameters inside a wrapped layer
_PEFT_OWN = re.compile(r"\.(?:lora_(?:A|B|dropout|embedding_A|embedding_B|magnitude_vector)|hada_\w+|lokr_\w+|oft_\w+)(?:\.|$)")


def _native_dit(names: Iterable[str]) -> bool:
    """Whether module names are a diffusion transformer's under its native (BFL/SAI) names."""
    return any(n.startswith(("double_blocks.", "joint_blocks.")) for n in names)


def _build_keymap(component: str, names: list[str], shapes: dict[str, Sequence[int]]) -> KeyMap:
    from loraprompt.keymaps.family import model_family

    owners = {k.rpartition(".")[0] for k in shapes}
    root = _root(names)
    rel_names = {n: n[len(root) :] for n in names if n.startswith(root) and len(n) > len(root)}
    if shapes:
        rel_names = {n: r for n, r in rel_names.items() if n in owners}
    targets: dict[str, Target] = {}
    ambiguous: set[str] = set()

    def add(alias: str, target: Target) -> None:
        key = _kohya(alias)
        if targets.setdefault(key, target) != target:
            ambiguous.add(key)

    fused: dict[str, tuple[tuple[Target, tuple[int, int]], ...]] = {}
    if component == "transformer" or (component == "unet" and _native_dit(rel_names.values())):
        # (a single-file SD3/Flux/Wan checkpoint's `model.diffusion_model.` is read as the "unet")
        rel_set = set(rel_names.values())
        rel_shapes = {k[len(root) :]: v for k, v in shapes.items() if k.startswith(root)}
        for full, name in rel_names.items():
            add(name, Target(full))
        naming = dit.dit_model_naming(rel_set)
        if naming is None:
            aliases = {}
        elif naming[1] == "diffusers":
            aliases = dit.native_aliases(naming[0], rel_set, rel_shapes)
        else:  # loaded under native names (ComfyUI/Forge): diffusers names are rows of fused weights
            aliases = dit.diffusers_aliases(naming[0], rel_set, rel_shapes)
        for alias, pieces in aliases.items():
            if len(pieces) == 1 and pieces[0].start == 0 and (pieces[0].rows is None or (naming and naming[1] == "native")):
                add(alias, Target(root + pieces[0].module, rows=pieces[0].rows))
            else:
                fused[_kohya(alias)] = tuple((Target(root + p.module, rows=p.rows), (p.start, p.stop)) for p in pieces)
    elif component == "unet":
        up_attn = unet.up_levels_with_attention(set(rel_names.values()))
        for full, rel in rel_names.items():
            for alias in _unet_aliases(rel, up_attn):
                add(alias, Target(full))
    else:
        openclip = clip.is_openclip(set(rel_names.values()))
        for full, rel in rel_names.items():
            for alias, target in _text_aliases(rel, full, shapes, openclip):
                add(alias, target)
    for key in ambiguous:
        del targets[key]
    rel_shapes = {k[len(root) :]: v for k, v in shapes.items() if k.startswith(root)}
    family = model_family(component, set(rel_names.values()), rel_shapes)
    return KeyMap(component, targets, family, root, tuple(sorted(ambiguous)), {k: tuple(v) for k, v in shapes.items()}, fused)


def keymap_for_module(component: str, module: nn.Module) -> KeyMap:
    """build_keymap from a torch module's own names and parameter shapes."""
    names = [n for n, _ in module.named_modules()]
    shapes = {n: logical_shape(p) for n, p in module.named_parameters()}
    return build_keymap(component, names, shapes)


def logical_shape(param: Any) -> tuple[int, ...]:
    """A parameter's shape; for a packed 4-bit weight (bitsandbytes keeps the bytes, shaped
    (n/2, 1)) the shape of the weight it stands for, which row slices and family checks need."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None and not param.is_floating_point():
        return tuple(int(s) for s in shape)
    return tuple(param.shape)


__all__ = ["KeyMap", "Target", "build_keymap", "check_family", "keymap_for_module", "map_adapter"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """The checking helpers live in `loraprompt.keymaps.check` (imported on first use)."""
    if name in ("check_family", "map_adapter"):
        from loraprompt.keymaps import check

        return getattr(check, name)
    raise AttributeError(f"module 'loraprompt.keymaps' has no attribute {name!r}")
