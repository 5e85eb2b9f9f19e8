"""SD2 and SDXL as A1111 holds them. SDXL: SGM UNet names, `conditioner.embedders[0]` (CLIP-L) and `[1]` (OpenCLIP
with q/k/v fused in `in_proj_weight`), non-text embedders beside them."""

from __future__ import annotations

import importlib

import torch

from tests.fixtures.models import tiny_openclip_text

from .conftest import Webui, expected_delta
from .ldm import TinySD2, TinySDXL, changed, snapshot

W = 24  # the OpenCLIP tower's width
SDXL_MODULES: dict[str, tuple[str, int, int, int]] = {
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", 8, 8, 0),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (
        "conditioner.embedders.0.wrapped.transformer.text_model.encoder.layers.0.self_attn.q_proj", 16, 16, 0),
    "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": (
        "conditioner.embedders.1.wrapped.model.transformer.resblocks.0.attn", W, W, 0),
    "lora_te2_text_model_encoder_layers_1_mlp_fc1": (
        "conditioner.embedders.1.wrapped.model.transformer.resblocks.1.mlp.c_fc", 4 * W, W, 0),
}


def test_sdxl_lora_patches_unet_both_encoders_and_fused_rows(webui: Webui) -> None:
    model = TinySDXL(tiny_openclip_text(width=W))
    webui.sd_model = importlib.import_module("modules.shared").sd_model = model
    webui.write_lora("xl", seed=5, metadata={"ss_base_model_version": "sdxl_base_v1-0"}, modules=SDXL_MODULES)
    webui.load_extension()
    webui.start()
    before = snapshot(model)
    result = webui.generate("<lora:xl:0.5>")
    assert "loraprompt" not in result.extra_generation_params, result.comments
    tensors = webui.files["xl"]
    for key, (name, *_rest) in SDXL_MODULES.items():
        module = model.get_submodule(name)
        if name.endswith(".attn"):  # k is rows W:2W of the fused q/k/v projection
            got, base = module.in_proj_weight[W : 2 * W], before[name + ".in_proj_weight"][W : 2 * W]
            untouched = [module.in_proj_weight[:W], module.in_proj_weight[2 * W :]]
            assert torch.equal(torch.cat(untouched), torch.cat([before[name + ".in_proj_weight"][:W], before[name + ".in_proj_weight"][2 * W :]]))
        else:
            got, base = module.weight, before[name + ".weight"]
        assert torch.allclose(got, base + 0.5 * expected_delta(tensors, key), atol=1e-6), key
    webui.generate("no tags")
    assert changed(model, before) == []


def test_sd1_lora_on_sdxl_is_refused_with_a_reason(webui: Webui) -> None:
    model = TinySDXL(tiny_openclip_text(width=W))
    webui.sd_model = importlib.import_module("modules.shared").sd_model = model
    webui.write_lora("sd15", seed=1, metadata={"ss_base_model_version": "sd_v1"})
    webui.load_extension()
    webui.start()
    before = snapshot(model)
    result = webui.generate("<lora:sd15:1>")
    assert changed(model, before) == []
    assert "SD1.x" in result.comments and "SDXL" in result.comments


def test_sd2_openclip_text_encoder_gets_q_rows(webui: Webui) -> None:
    model = TinySD2(tiny_openclip_text(width=W))
    webui.sd_model = importlib.import_module("modules.shared").sd_model = model
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    name = "cond_stage_model.wrapped.model.transformer.resblocks.0.attn"
    webui.write_lora("v2", seed=3, metadata={"ss_v2": "True"}, modules={key: (name, W, W, 0)})
    webui.load_extension()
    webui.start()
    before = snapshot(model)
    webui.generate("<lora:v2:1>")
    fused = model.get_submodule(name).in_proj_weight
    assert torch.allclose(fused[:W], before[name + ".in_proj_weight"][:W] + expected_delta(webui.files["v2"], key), atol=1e-6)
    assert torch.equal(fused[W:], before[name + ".in_proj_weight"][W:])
    webui.generate("")
    assert changed(model, before) == []
