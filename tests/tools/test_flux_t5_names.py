"""Flux.1's T5 keeps its name in every layout the tools write: diffusers' `text_encoder_2` in PEFT
files, sd-scripts' `lora_te3_` in kohya files (networks/lora_flux.py: lora_te1 is CLIP-L, lora_te3
T5-XXL) and ComfyUI's `text_encoders.t5xxl.transformer.`. It was written as SDXL's second encoder
(`lora_te2_`, `clip_g`), which neither sd-scripts/Forge nor ComfyUI map on Flux: that part of a
converted file did nothing there. CLIP-L is `lora_te1_` on Flux and SD3, as sd-scripts writes it."""

from __future__ import annotations

from pathlib import Path

import torch

from loraprompt.tools.lora import LoraFactors, read_lora
from loraprompt.tools.writer import kohya_tensors, native_tensors, peft_tensors, write_lora

T5 = "encoder_block_0_layer_0_SelfAttention_q"


def factors(component: str) -> list[LoraFactors]:
    g = torch.Generator().manual_seed(0)
    return [LoraFactors(component, T5, torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 2.0),
            LoraFactors("text_encoder", "text_model_encoder_layers_0_mlp_fc1", torch.randn(2, 8, generator=g),
                        torch.randn(8, 2, generator=g), 2.0)]


def test_flux_t5_gets_each_layouts_own_name() -> None:
    for component in ("text_encoder_2", "text_encoder_3"):  # as PEFT files and as kohya/ComfyUI files are read
        kohya = kohya_tensors(factors(component), "flux")
        assert f"lora_te3_{T5}.lora_down.weight" in kohya and "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha" in kohya
        comfy = native_tensors(factors(component), "comfyui", "flux")
        assert "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_down.weight" in comfy
        peft, _ = peft_tensors(factors(component), "flux")
        assert "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight" in peft
    # SD3's text_encoder_2 is CLIP-G and its T5 is text_encoder_3: unchanged
    assert f"lora_te2_{T5}.alpha" in kohya_tensors(factors("text_encoder_2"), "sd3")


def test_a_flux_t5_part_survives_kohya_and_back(tmp_path: Path) -> None:
    """PEFT -> kohya -> PEFT gives the same tensors under the same names."""
    start = factors("text_encoder_2")
    kohya = tmp_path / "k.safetensors"
    write_lora(kohya, start, "kohya", {}, "flux")
    back = read_lora(kohya)
    assert {m.component for m in back.modules.values()} == {"text_encoder", "text_encoder_3"}
    peft, _ = peft_tensors(back.modules.values(), "flux")
    original, _ = peft_tensors(start, "flux")
    assert peft.keys() == original.keys() and all(torch.equal(peft[k], original[k]) for k in peft)
