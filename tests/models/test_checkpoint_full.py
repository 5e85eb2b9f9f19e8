"""Opt-in (LORAPROMPT_HEAVY_TESTS=1, ~7 GB RAM, 2 GB disk): a full-size SD1.5-shaped single file
with random fp16 weights loads through the shipped configs and tokenizer, offline, and generates.
Run it under `flock /tmp/loraprompt-heavy.lock`."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.models.checkpoint import family_config, load_checkpoint
from tests.models.ldm_layout import ldm_state_dict

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LORAPROMPT_HEAVY_TESTS") != "1", reason="set LORAPROMPT_HEAVY_TESTS=1"),
]
os.environ["HF_HUB_OFFLINE"] = "1"


def _random_weights(module: Any, generator: torch.Generator) -> Any:
    """A stand-in with `state_dict()` of random fp16 tensors shaped like the meta `module`."""
    tensors = {
        k: torch.arange(v.shape[-1]).expand(v.shape).clone() if "position_ids" in k
        else (torch.randn(v.shape, generator=generator) * 0.02).half()
        for k, v in module.state_dict().items()
    }
    return types.SimpleNamespace(state_dict=lambda: tensors, config=getattr(module, "config", None))


def test_full_size_sd15_single_file_loads_with_shipped_configs(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = family_config("sd1")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items() if k != "architectures"}))
    g = torch.Generator().manual_seed(0)
    tensors = ldm_state_dict(types.SimpleNamespace(unet=_random_weights(unet, g), vae=_random_weights(vae, g),
                                                   text_encoder=_random_weights(te, g)))
    probe_key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    probe = tensors[probe_key].float().clone()
    path = tmp_path / "sd15-random.safetensors"
    save_file(tensors, str(path))
    del tensors

    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.name) == ("sd1", "sd15-random")
    attn2 = loaded.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert torch.equal(attn2.to_k.weight.float().cpu(), probe)
    assert loaded.pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    image = loaded.pipe("a photo of a cat", num_inference_steps=1, width=64, height=64).images[0]
    assert image.size == (64, 64)
