"""SDXL and LDM/SGM module names in the LoRA writers: kohya prefixes, PEFT and ComfyUI names."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loraprompt.tools.convert import convert_lora
from loraprompt.tools.extract import extract_lora
from loraprompt.tools.io import load_tensors
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.svd import RankTarget
from tests.fixtures.loras import write_kohya_lora
from tests.tools.checkpoints import a1111_models, write_single_file

TE1_KEY = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
UNET_KEY = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"


def _te_prefixes(path: Path) -> set[str]:
    return {k.split("_text_model")[0] for k in load_file(str(path)) if k.startswith("lora_te")}


def test_sdxl_file_adapting_only_clip_l_keeps_lora_te1(tmp_path: Path) -> None:
    """A1111 on SDXL maps lora_te1_/lora_te2_ only: lora_te_ there would silently do nothing."""
    tensors = load_file(str(write_kohya_lora("sdxl", tmp_path / "k.safetensors", sd_scripts_names=True).path))
    src = tmp_path / "te1only.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("lora_te2_")}, str(src),
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert _te_prefixes(src) == {"lora_te1"}
    convert_lora(src, tmp_path / "c.safetensors", "kohya")
    resize_lora(src, tmp_path / "r.safetensors", RankTarget(rank=2))
    assert _te_prefixes(tmp_path / "c.safetensors") == {"lora_te1"}
    assert _te_prefixes(tmp_path / "r.safetensors") == {"lora_te1"}


def test_sdxl_extract_with_the_second_text_encoder_unchanged_writes_lora_te1(tmp_path: Path) -> None:
    base = tmp_path / "base.safetensors"
    write_single_file(a1111_models("sdxl"), "sdxl", base)
    tensors, meta = load_tensors(base)
    gen = torch.Generator().manual_seed(0)
    for key in (TE1_KEY, UNET_KEY):
        w = tensors[key]
        tensors[key] = w + 0.05 * torch.randn(w.shape[0], 1, generator=gen) @ torch.randn(1, w.shape[1], generator=gen)
    save_file(tensors, str(tmp_path / "tuned.safetensors"), metadata=meta)
    out = extract_lora(tmp_path / "tuned.safetensors", base, tmp_path / "x.safetensors", RankTarget(rank=2)).output
    assert _te_prefixes(out) == {"lora_te1"}
