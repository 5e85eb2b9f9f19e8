"""diffusers -> single-file names, checked by converting back with diffusers' own converters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import save_file

from loraprompt.errors import ToolError
from loraprompt.tools.to_single import component_to_single
from tests.fixtures.models import tiny_sd1, tiny_sdxl


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


def test_unet_and_clip_round_trip_through_diffusers_converters() -> None:
    models = tiny_sd1(seed=0)
    unet = models["unet"].state_dict()
    single = component_to_single("unet", "sd1", unet)
    _same(dict(sfu.convert_ldm_unet_checkpoint(single, dict(models["unet"].config))), unet)
    te = models["text_encoder"].state_dict()
    back = sfu.convert_ldm_clip_checkpoint(component_to_single("text_encoder", "sd1", te))
    _same({k.removeprefix("text_model."): v for k, v in back.items()}, te)


def test_openclip_round_trip_through_diffusers_converter() -> None:
    te2 = tiny_sdxl(seed=0)["text_encoder_2"]
    single = component_to_single("text_encoder_2", "sdxl", te2.state_dict())
    assert any(k.endswith("attn.in_proj_weight") for k in single)
    back = sfu.convert_open_clip_checkpoint(te2, single, prefix="conditioner.embedders.1.model.")
    _same(dict(back), {k: v for k, v in te2.state_dict().items() if not k.endswith("position_ids")})


def test_vae_round_trip_through_diffusers_converter() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4)
    state = vae.state_dict()
    single = component_to_single("vae", "sd1", state)
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in single
    assert single["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    _same(dict(sfu.convert_ldm_vae_checkpoint(single, dict(vae.config))), state)


def test_vae_with_deprecated_attention_names_converts_like_the_loaded_vae(tmp_path: Path) -> None:
    """Older folders (SD1.5's VAE) store query/key/value/proj_attn; diffusers still loads them."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, tensor in vae.state_dict().items():
        for new, was in old.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{was}.")
        state[key] = tensor
    assert any(".query." in k for k in state)
    vae.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    loaded = AutoencoderKL.from_pretrained(tmp_path).state_dict()  # diffusers' own reading of the old names
    single = component_to_single("vae", "sd1", state)
    assert single["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)
    assert single.keys() == component_to_single("vae", "sd1", loaded).keys()
    _same(dict(sfu.convert_ldm_vae_checkpoint(single, dict(vae.config))), loaded)
    with pytest.raises(ToolError, match=r"decoder\.mid_block\.attentions\.0\.rel_pos\.weight"):
        component_to_single("vae", "sd1", {**state, "decoder.mid_block.attentions.0.rel_pos.weight": torch.ones(2, 2)})
