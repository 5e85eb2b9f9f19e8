"""Write a merged single-file checkpoint as a diffusers folder, one component in memory at a time.

The key conversion is diffusers' own (`diffusers.loaders.single_file_utils`); the configs are the
ones loraprompt ships per family (`loraprompt.models.checkpoint`), or the caller's.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from loraprompt.errors import ToolError
from loraprompt.tools.checkpoint import Checkpoint, TensorFile
from loraprompt.tools.io import Progress, save_tensors, spec_nbytes

# component -> (single-file prefix per family, weight file name)
_PREFIX = {
    "unet": {"sd1": "model.diffusion_model.", "sd2": "model.diffusion_model.", "sdxl": "model.diffusion_model."},
    "vae": {"sd1": "first_stage_model.", "sd2": "first_stage_model.", "sdxl": "first_stage_model."},
    "text_encoder": {"sd1": "cond_stage_model.transformer.", "sd2": "cond_stage_model.model.",
                     "sdxl": "conditioner.embedders.0.transformer."},
    "text_encoder_2": {"sdxl": "conditioner.embedders.1.model."},
}
_FILE = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
         "text_encoder": "model.safetensors", "text_encoder_2": "model.safetensors"}


def _convert(component: str, family: str, prefix: str, state: dict[str, Tensor],
             config: Mapping[str, Any]) -> dict[str, Tensor]:
    from diffusers.loaders import single_file_utils as sfu

    if component == "unet":
        return dict(sfu.convert_ldm_unet_checkpoint(state, dict(config)))
    if component == "vae":
        return dict(sfu.convert_ldm_vae_checkpoint(state, dict(config)))
    if prefix.endswith("model.") and not prefix.endswith("transformer."):
        from transformers import CLIPTextConfig, CLIPTextModel

        with torch.device("meta"):
            shell = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))
        return dict(sfu.convert_open_clip_checkpoint(shell, state, prefix=prefix))
    return dict(sfu.convert_ldm_clip_checkpoint(state, remove_prefix=prefix))


def write_diffusers(ckpt: Checkpoint, tensor: Callable[[TensorFile, str], Tensor], family: str, staging: Path, *,
                    configs: Mapping[str, Any] | None, metadata: dict[str, str], bar: Progress) -> int:
    """Lay the (merged) single-file checkpoint out as a diffusers folder in `staging`."""
    from loraprompt.models.checkpoint import family_config, write_config_dir

    if ckpt.layout != "single-file":
        raise ToolError("only a single-file checkpoint is written as a diffusers folder")
    configs = dict(configs) if configs is not None else family_config(family)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(write_config_dir(configs, tmp), staging, dirs_exist_ok=True)
    file = ckpt.files[0]
    written = 0
    for component, prefixes in _PREFIX.items():
        prefix = prefixes.get(family)
        keys = [k for k in file.specs if prefix and k.startswith(prefix)]
        if component not in configs:
            continue  # e.g. custom configs without a VAE
        if not keys:
            raise ToolError(f"{ckpt.root}: no {prefix}* tensors for the diffusers {component}")
        state = {k: tensor(file, k) for k in keys}
        try:
            converted = _convert(component, family, prefix or "", state, configs[component])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ToolError(f"{ckpt.root}: diffusers could not convert the {family} {component}: {exc}") from exc
        del state
        save_tensors(staging / component / _FILE[component],
                     {k: v.contiguous() for k, v in sorted(converted.items())}, {"format": "pt", **metadata})
        written += len(converted)
        bar.update(sum(spec_nbytes(*file.specs[k]) for k in keys))
    return written

