"""Diffusers component names back to the original single-file (LDM/SGM) layout.

UNet names come from `loraprompt.keymaps.unet.to_ldm`; the VAE, CLIP and OpenCLIP tables below are
the inverse of diffusers' `single_file_utils` conversions (tests run both directions).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from loraprompt.errors import ToolError
from loraprompt.keymaps.unet import to_ldm, up_levels_with_attention
from loraprompt.tools.checkpoint import Checkpoint, TensorFile
from loraprompt.tools.io import Progress, StreamingWriter, spec_nbytes

TE_ROOTS = {"sd1": {"text_encoder": "cond_stage_model.transformer."},
            "sd2": {"text_encoder": "cond_stage_model.model."},
            "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.",
                     "text_encoder_2": "conditioner.embedders.1.model."}}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             # the deprecated names older folders (SD1.5's VAE) store, which diffusers still loads
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_OPENCLIP = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_OPENCLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def unet_to_single(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers UNet state dict in `model.diffusion_model.` names."""
    up_attn = up_levels_with_attention({k.rpartition(".")[0] for k in state})
    out = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        ldm = to_ldm(module, up_attn)
        if ldm is None:
            raise ToolError(f"unet: no original-layout name for {key!r}")
        out[f"model.diffusion_model.{ldm}.{param}"] = tensor
    return out


def _vae_name(key: str, levels: int) -> str:
    m = re.match(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        side, blocks, i, kind, j, rest = m.groups()
        level = int(i) if blocks == "down_blocks" else levels - 1 - int(i)
        where = "down" if blocks == "down_blocks" else "up"
        if kind == "resnets":
            head, _, param = rest.rpartition(".")
            return f"{side}.{where}.{level}.block.{j}.{_VAE_RESNET.get(head, head)}.{param}"
        return f"{side}.{where}.{level}.{'downsample' if kind == 'downsamplers' else 'upsample'}.{rest}"
    m = re.match(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        side, kind, j, rest = m.groups()
        head, _, param = rest.rpartition(".")
        if kind == "resnets":
            return f"{side}.mid.block_{int(j) + 1}.{_VAE_RESNET.get(head, head)}.{param}"
        if kind == "attentions" and j == "0" and head in _VAE_ATTN:
            return f"{side}.mid.attn_1.{_VAE_ATTN[head]}.{param}"
        raise ToolError(f"vae: no original-layout name for {key!r}")
    side, _, rest = key.partition(".")
    head, _, param = rest.rpartition(".")
    return f"{side}.{_VAE_TOP.get(head, head)}.{param}" if side in ("encoder", "decoder") else key


def vae_to_single(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict in `first_stage_model.` names (attention as 1x1 convs)."""
    levels = 1 + max(int(m[1]) for k in state if (m := re.match(r"^encoder\.down_blocks\.(\d+)\.", k)))
    out = {}
    for key, tensor in state.items():
        name = _vae_name(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.dim() == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[f"first_stage_model.{name}"] = tensor
    return out


def clip_to_single(state: dict[str, Tensor], root: str) -> dict[str, Tensor]:
    """A transformers CLIPTextModel state dict (4.x or 5.x names) under `root` (`…transformer.`)."""
    return {root + (k if k.startswith("text_model.") else f"text_model.{k}"): t for k, t in state.items()}


def openclip_to_single(state: dict[str, Tensor], root: str) -> dict[str, Tensor]:
    """A transformers CLIPTextModel(WithProjection) state dict as OpenCLIP under `root` (q/k/v fused)."""
    hf = {k.removeprefix("text_model."): t for k, t in state.items()}
    out: dict[str, Tensor] = {}
    for key, tensor in hf.items():
        if key in _OPENCLIP_TOP:
            out[root + _OPENCLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out[root + "text_projection"] = tensor.t().contiguous()
        elif key.startswith("encoder.layers."):
            _, _, n, child = key.split(".", 3)
            module, _, param = child.rpartition(".")
            if module == "self_attn.q_proj":
                parts = [hf[f"encoder.layers.{n}.self_attn.{p}_proj.{param}"] for p in "qkv"]
                out[f"{root}transformer.resblocks.{n}.attn.in_proj_{param}"] = torch.cat(parts)
            elif module not in ("self_attn.k_proj", "self_attn.v_proj"):
                out[f"{root}transformer.resblocks.{n}.{_OPENCLIP[module]}.{param}"] = tensor
        elif key != "embeddings.position_ids":
            raise ToolError(f"text encoder: no OpenCLIP name for {key!r}")
    return out


def component_to_single(component: str, family: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """One diffusers component's state dict in the original single-file names of `family`."""
    if component == "unet":
        return unet_to_single(state)
    if component == "vae":
        return vae_to_single(state)
    root = TE_ROOTS[family].get(component)
    if root is None:
        raise ToolError(f"{family}: no single-file place for the {component}")
    return openclip_to_single(state, root) if root.endswith("model.") else clip_to_single(state, root)


def write_single(ckpt: Checkpoint, tensor: Callable[[TensorFile, str], Tensor], family: str, target: Path, *,
                 out_dtype: Callable[[torch.dtype], torch.dtype], metadata: dict[str, str], bar: Progress) -> int:
    """Write a (merged) diffusers folder as one original-layout file, one component in memory at a time."""
    groups: dict[str, list[TensorFile]] = {}
    for file in ckpt.files:
        groups.setdefault(file.path.parent.name, []).append(file)
    plan = []
    for component, files in groups.items():
        meta = {k: torch.empty(s, dtype=out_dtype(d), device="meta") for f in files for k, (d, s) in f.specs.items()}
        converted = component_to_single(component, family, meta)
        plan.append((component, files, [(k, t.dtype, tuple(t.shape)) for k, t in converted.items()]))
    with open(target, "wb") as handle:
        writer = StreamingWriter(handle, [spec for _, _, specs in plan for spec in specs], metadata)
        for component, files, specs in plan:
            state = {k: tensor(f, k) for f in files for k in f.specs}
            bar.update(sum(spec_nbytes(*f.specs[k]) for f in files for k in f.specs))
            converted = component_to_single(component, family, state)
            del state
            for key, _, _ in specs:
                writer.write(key, converted.pop(key).contiguous())
        writer.close()
    return sum(len(specs) for _, _, specs in plan)
