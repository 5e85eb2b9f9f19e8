"""Write a diffusers SD1 pipeline as a single-file checkpoint in the original LDM layout (what
Automatic1111 loads and Civitai serves), for the checkpoint-loading tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from loraprompt.keymaps.unet import to_ldm

VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(key: str, up_with_attention: set[int]) -> str:
    module, param = key.rsplit(".", 1)
    ldm = to_ldm(module, up_with_attention)
    if ldm is None:
        raise KeyError(f"no LDM name for UNet tensor {key}")
    return f"model.diffusion_model.{ldm}.{param}"


def _vae_key(key: str, levels: int) -> str:
    """The LDM name of a diffusers AutoencoderKL tensor."""
    for pattern, repl in (
        (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
    ):
        key = re.sub(pattern, repl, key)
    for table in (VAE_RESNET, VAE_ATTENTION):
        for src, dst in table.items():
            key = key.replace(f".{src}.", f".{dst}.")
    return f"first_stage_model.{key}"


def _clip_key(key: str) -> str:
    # transformers 5 dropped the `text_model.` level from CLIPTextModel; checkpoints carry it.
    return "cond_stage_model.transformer." + (key if key.startswith("text_model.") else f"text_model.{key}")


def ldm_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder under LDM names (VAE attention as 1x1 convs)."""
    out: dict[str, torch.Tensor] = {}
    unet = pipe.unet.state_dict()
    up_with_attention = {int(k.split(".")[1]) for k in unet if k.startswith("up_blocks.") and ".attentions." in k}
    for key, value in unet.items():
        out[_unet_key(key, up_with_attention)] = value
    levels = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".attn_1." in name and name.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out[name] = value
    for key, value in pipe.text_encoder.state_dict().items():
        out[_clip_key(key)] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def write_ldm_checkpoint(pipe: Any, path: Path) -> Path:
    """Save `pipe` as one LDM-layout `.safetensors` file."""
    save_file(ldm_state_dict(pipe), str(path))
    return path
