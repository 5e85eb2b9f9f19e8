"""Plain LoRA factors (down, up, alpha, optional CP mid) read losslessly from LoRA files.

Layouts (`LoraSet.format`): "kohya" (`lora_unet_<path>.lora_down.weight` + `.alpha`), "peft"
(`transformer.<module>.lora_A.weight`, alpha from `lora_adapter_metadata`), and the layouts
diffusion-transformer LoRAs come in: "comfyui" (`diffusion_model.<module>.lora_down.weight` +
`.alpha`, also `text_encoders.clip_l.transformer.…`), "bfl" (`diffusion_model.<module>.lora_A.weight`,
as BFL and ai-toolkit write Flux files; alpha baked into up unless an `.alpha` is stored) and
"xlabs" (`double_blocks.N.processor.qkv_lora1.down.weight`, read under the BFL module it adapts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from loraprompt.adapters.finite import all_finite
from loraprompt.adapters.keys import COMFY_PREFIXES
from loraprompt.adapters.reader import PEFT_METADATA_KEY, peft_alpha, peft_configs
from loraprompt.errors import AdapterFileError
from loraprompt.tools.io import RECIPE_KEY, load_tensors

KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3", "lora_transformer_": "transformer"}
PEFT_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha"}
_PEFT_PARTS = {"lora_A.weight": "down", "lora_B.weight": "up"}
_NATIVE_PARTS = {"comfyui": {**_KOHYA_PARTS}, "bfl": {**_PEFT_PARTS, "alpha": "alpha"}}
# XLabs' Flux processors: (kind, projection, stream) <-> the BFL module they adapt
XLABS_MODULES = {
    ("double", "qkv_lora1"): "img_attn.qkv", ("double", "qkv_lora2"): "txt_attn.qkv",
    ("double", "proj_lora1"): "img_attn.proj", ("double", "proj_lora2"): "txt_attn.proj",
    ("single", "qkv_lora"): "qkv", ("single", "proj_lora"): "linear2",
}


@dataclass(eq=False)
class LoraFactors:
    """One LoRA module: ΔW = (alpha / rank) · up @ down (through `mid` for CP/Tucker convs)."""

    component: str
    path: str  # kohya spelling: dots of the module name turned into "_"
    down: Tensor
    up: Tensor
    alpha: float | None = None  # None: alpha = rank (scale 1)
    mid: Tensor | None = None
    dotted: str | None = None  # the module name with its dots, when the file spelled it

    @property
    def key(self) -> str:
        return f"{self.component}/{self.path}"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    def delta(self) -> Tensor:
        """ΔW in float32, shaped (out, in) for linear or (out, in, kh, kw) for conv."""
        up = self.up.float().reshape(self.up.shape[0], -1)
        if self.mid is not None:
            down = self.down.float().reshape(self.down.shape[0], -1)
            full = torch.einsum("ijkl,oi,jn->onkl", self.mid.float(), up, down)
            return full * self.scale
        down = self.down.float()
        out = up @ down.reshape(down.shape[0], -1)
        return (out * self.scale).reshape(up.shape[0], *down.shape[1:])


@dataclass(eq=False)
class LoraSet:
    """The plain LoRA modules of one file, with its metadata and layout."""

    path: str
    format: str  # "kohya" or "peft"
    modules: dict[str, LoraFactors]
    metadata: dict[str, str] = field(default_factory=dict)
    family: str | None = None  # keymaps.family's verdict: which table a native module name is read with
    # A1111's bundled textual-inversion embeddings (`bundle_emb.<token>.…`, as `train --pivotal`
    # writes them): not LoRA factors, carried through as they are
    embeddings: dict[str, Tensor] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        first = next(iter(self.modules.values()), None)
        return torch.float32 if first is None else first.down.dtype

    def user_metadata(self) -> dict[str, str]:
        """Metadata minus what a layout or a previous tool run wrote, and minus kohya's hashes of
        the file's tensors (sshs_*), which no longer hold once a tool rewrites them."""
        stale = (PEFT_METADATA_KEY, RECIPE_KEY, "sshs_model_hash", "sshs_legacy_hash")
        return {k: v for k, v in self.metadata.items() if k not in stale}


def read_lora(path: str | Path) -> LoraSet:
    """Read a kohya or PEFT/diffusers LoRA file exactly as stored; AdapterFileError otherwise."""
    from loraprompt.keymaps.family import detect_file_family

    tensors, metadata = load_tensors(path)
    embeddings = {k: v for k, v in tensors.items() if k.startswith("bundle_emb.")}
    tensors = {k: v for k, v in tensors.items() if k not in embeddings}
    if not tensors:
        raise AdapterFileError(path, "file holds no LoRA tensors" if embeddings else "file holds no tensors")
    family = detect_file_family({k: tuple(v.shape) for k, v in tensors.items()}, metadata).family
    if any(k.startswith("lora_") for k in tensors):
        fmt, modules = "kohya", _read_kohya(path, tensors)
    elif any(".processor." in k and k.startswith(("double_blocks.", "single_blocks.")) for k in tensors):
        fmt, modules = "xlabs", _read_xlabs(path, tensors)
    elif any(k.startswith(tuple(COMFY_PREFIXES)) for k in tensors):
        fmt = "bfl" if any(k.endswith(".lora_A.weight") for k in tensors) else "comfyui"
        modules = _read_native(path, tensors, fmt)
    else:
        fmt, modules = "peft", _read_peft(path, tensors, metadata)
    return LoraSet(str(path), fmt, modules, metadata, family, embeddings)


def _read_native(path: str | Path, tensors: Mapping[str, Tensor], fmt: str) -> dict[str, LoraFactors]:
    """ComfyUI (`diffusion_model.<module>.lora_down.weight`) or BFL (`….lora_A.weight`) keys."""
    parts_of = _NATIVE_PARTS[fmt]
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        prefix = next((p for p in COMFY_PREFIXES if key.startswith(p)), None)
        rest = key[len(prefix):] if prefix else ""
        part = next((p for p in parts_of if rest.endswith("." + p)), None)
        if prefix is None or part is None:
            raise AdapterFileError(path, f"not a plain {fmt} LoRA key (expected diffusion_model.<module> with "
                                         f"{' / '.join(sorted(parts_of))})", key=key)
        _put(path, groups.setdefault((COMFY_PREFIXES[prefix], rest[: -len(part) - 1]), {}), parts_of[part], tensor, key)
    return _grouped(path, groups)


def _read_xlabs(path: str | Path, tensors: Mapping[str, Tensor]) -> dict[str, LoraFactors]:
    """XLabs' `double_blocks.N.processor.qkv_lora1.down.weight`, under the BFL module it adapts (scale 1)."""
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        head, _, tail = key.partition(".processor.")
        kind, _, index = head.removeprefix("diffusion_model.").partition("_blocks.")
        proc, _, part = tail.partition(".")
        native = XLABS_MODULES.get((kind, proc))
        if native is None or not index.isdigit() or part not in ("down.weight", "up.weight"):
            raise AdapterFileError(path, "not an XLabs Flux LoRA key (expected double_blocks.N.processor."
                                         "qkv_lora1.down.weight and the like)", key=key)
        groups.setdefault(("unet", f"{kind}_blocks.{index}.{native}"), {})[part.partition(".")[0]] = tensor
    return _grouped(path, groups)


def _put(path: str | Path, parts: dict[str, Tensor], part: str, tensor: Tensor, key: str) -> None:
    """One factor of a module; refused when the file already gave it under another spelling of the
    same module (`lora_te_` and `lora_te1_`, ComfyUI's `clip_l` and `clip_h`): one of the two would
    be dropped silently (read_adapter refuses such a file too)."""
    if part in parts:
        raise AdapterFileError(path, "this module's tensor is in the file twice, under two spellings of the "
                                     "module (e.g. lora_te_ and lora_te1_); which one is meant is unknown", key=key)
    parts[part] = tensor


def _grouped(path: str | Path, groups: Mapping[tuple[str, str], dict[str, Tensor]]) -> dict[str, LoraFactors]:
    modules = {}
    for (component, dotted), parts in groups.items():
        factors = _factors(path, f"{component}/{dotted}", component, dotted.replace(".", "_"), parts)
        factors.dotted = dotted
        modules[factors.key] = factors
    return modules


def _read_kohya(path: str | Path, tensors: Mapping[str, Tensor]) -> dict[str, LoraFactors]:
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        prefix = next((p for p in KOHYA_PREFIXES if key.startswith(p)), None)
        name, _, part = key.partition(".")
        if prefix is None or part not in _KOHYA_PARTS:
            raise AdapterFileError(path, "not a plain kohya LoRA key: LyCORIS files (LoHa, LoKr, ...) "
                                         "can only be merged into a checkpoint (merge --checkpoint); convert, "
                                         "resize and LoRA merges take plain LoRAs", key=key)
        _put(path, groups.setdefault((KOHYA_PREFIXES[prefix], name[len(prefix):]), {}), _KOHYA_PARTS[part], tensor, key)
    modules = {}
    for (component, mpath), parts in groups.items():
        factors = _factors(path, f"{component}/{mpath}", component, mpath, parts)
        modules[factors.key] = factors
    return modules


def _read_peft(path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> dict[str, LoraFactors]:
    config = peft_configs(path, metadata)
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        component, _, rest = key.partition(".")
        part = next((p for p in _PEFT_PARTS if rest.endswith("." + p)), None)
        if component not in PEFT_COMPONENTS or part is None:
            raise AdapterFileError(path, "not a plain LoRA key (expected unet./text_encoder./text_encoder_2. "
                                         "with .lora_A.weight or .lora_B.weight)", key=key)
        groups.setdefault((component, rest[: -len(part) - 1]), {})[_PEFT_PARTS[part]] = tensor
    modules = {}
    for (component, dotted), parts in groups.items():
        rank = parts["down"].shape[0] if "down" in parts else 1
        alpha = peft_alpha(path, config[component], dotted, rank, f"__metadata__.{PEFT_METADATA_KEY}") if config.get(component) else None
        if alpha is not None:
            parts["alpha"] = torch.tensor(alpha)
        factors = _factors(path, f"{component}.{dotted}", component, dotted.replace(".", "_"), parts)
        factors.dotted = dotted
        modules[factors.key] = factors
    return modules


# transformers 5's flattened CLIPTextModel names (`encoder.layers.0…`); files, A1111 and kohya spell
# them the transformers-4 way, `text_model_encoder_layers_0_…` (T5's are `encoder_block_…`)
_FLAT_CLIP = ("encoder_layers_", "embeddings_", "final_layer_norm")


def _factors(path: str | Path, where: str, component: str, mpath: str, parts: Mapping[str, Tensor]) -> LoraFactors:
    if component in ("text_encoder", "text_encoder_2") and mpath.startswith(_FLAT_CLIP):
        mpath = "text_model_" + mpath  # one name per module: what kohya writes, and what merges group by
    if "down" not in parts or "up" not in parts:
        missing = "down" if "down" not in parts else "up"
        raise AdapterFileError(path, f"LoRA module has no {missing} tensor", key=where)
    down, up = parts["down"], parts["up"]
    if down.shape[0] == 0:  # (alpha / rank) would divide by zero, and PEFT refuses r = 0
        raise AdapterFileError(path, "LoRA module has rank 0 (its down tensor has no rows)", key=where)
    if down.dim() not in (2, 4) or up.dim() != down.dim() or up.shape[1] != down.shape[0]:
        raise AdapterFileError(path, f"up {list(up.shape)} and down {list(down.shape)} do not fit", key=where)
    if any(t.is_floating_point() and not all_finite(t) for t in parts.values()):
        raise AdapterFileError(path, "NaN or Inf in the module's tensors", key=where)
    alpha = parts.get("alpha")
    if alpha is not None and alpha.dtype == torch.bool:  # True would read as 1.0
        raise AdapterFileError(path, "alpha is a bool tensor, not a number", key=f"{where}.alpha")
    if alpha is not None and (alpha.numel() != 1 or float(alpha.float().item()) == 0.0):
        raise AdapterFileError(path, f"alpha must be a non-zero scalar, got {alpha.flatten()[:4].tolist()}", key=where)
    return LoraFactors(component, mpath, down, up, None if alpha is None else float(alpha.float().item()),
                       parts.get("mid"))
