"""extract: a LoRA taken from a fine-tuned checkpoint reproduces a known low-rank difference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.errors import ToolError
from loraprompt.tools.extract import extract_lora
from loraprompt.tools.io import load_tensors
from loraprompt.tools.lora import read_lora
from loraprompt.tools.merge import merge_checkpoint
from loraprompt.tools.svd import RankTarget
from tests.tools.checkpoints import a1111_models, write_single_file

PICK = {
    "sd1": ["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
            "model.diffusion_model.output_blocks.3.0.in_layers.2.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight"],
    "sdxl": ["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
             "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"],
}


def _tuned(tmp_path: Path, family: str, rank: int = 2) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    base = tmp_path / "base.safetensors"
    write_single_file(a1111_models(family), family, base)
    tensors, meta = load_tensors(base)
    gen = torch.Generator().manual_seed(5)
    for key in PICK[family]:
        w = tensors[key]
        rows = w.shape[0] // 3 if key.endswith("in_proj_weight") else w.shape[0]
        flat = torch.randn(rows, rank, generator=gen) @ torch.randn(rank, w[0].numel(), generator=gen)
        delta = torch.zeros_like(w)  # for OpenCLIP's fused in_proj only the q rows change
        delta[:rows] = flat.reshape(rows, *w.shape[1:]) * 0.05
        tensors[key] = w + delta
    tuned = tmp_path / "tuned.safetensors"
    save_file(tensors, str(tuned), metadata=meta)
    return tuned, base, tensors


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_extracted_lora_reproduces_a_low_rank_difference(tmp_path: Path, family: str) -> None:
    tuned, base, expected = _tuned(tmp_path, family)
    report = extract_lora(tuned, base, tmp_path / "x.safetensors", RankTarget(rank=4), min_diff=1e-7)
    assert len(report.modules) == len(PICK[family])
    assert all(m.rank == 2 and m.kept == pytest.approx(1.0, abs=1e-5) for m in report.modules)
    lora = read_lora(report.output)
    if family == "sdxl":
        assert {k.split("/")[0] for k in lora.modules} == {"unet", "text_encoder_2"}
        assert any(k.endswith("input_blocks_4_1_transformer_blocks_0_attn2_to_k") for k in lora.modules)
        assert any(k.endswith("self_attn_q_proj") for k in lora.modules)
    else:
        assert any(k.endswith("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q") for k in lora.modules)
    rebuilt = merge_checkpoint(base, [report.output], tmp_path / "rebuilt.safetensors").output
    got, _ = load_tensors(rebuilt)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=2e-6)


def test_an_fp16_tune_of_an_fp32_base_gives_only_the_changed_modules(tmp_path: Path) -> None:
    """Fine-tunes are mostly shared in fp16 while the base is fp32: every weight the tuning left
    alone then differs by fp16's rounding, and extract factorised that noise into a module for
    every weight (rank 8 each, 'kept' 0.9). Weights equal at the coarser precision are unchanged."""
    tuned, base, expected = _tuned(tmp_path, "sd1")
    tensors, meta = load_tensors(tuned)
    half = tmp_path / "tuned-fp16.safetensors"
    save_file({k: v.half() for k, v in tensors.items()}, str(half), metadata=meta)
    report = extract_lora(half, base, tmp_path / "x.safetensors", RankTarget(rank=4))
    assert len(report.modules) == len(PICK["sd1"]) and all(m.rank == 4 for m in report.modules)
    rebuilt, _ = load_tensors(merge_checkpoint(base, [report.output], tmp_path / "rebuilt.safetensors").output)
    for key in PICK["sd1"]:  # the tune's change, to within fp16's rounding of the tuned weight
        torch.testing.assert_close(rebuilt[key], expected[key], rtol=0, atol=2e-3)


def test_energy_target_and_identical_models(tmp_path: Path) -> None:
    tuned, base, _ = _tuned(tmp_path, "sd1", rank=3)
    report = extract_lora(tuned, base, tmp_path / "e.safetensors", RankTarget(energy=0.999), fmt="peft")
    assert all(1 <= m.rank <= 3 and m.kept >= 0.999 for m in report.modules)
    with pytest.raises(ToolError, match="do not differ"):
        extract_lora(base, base.with_name("base.safetensors"), tmp_path / "none.safetensors", RankTarget(rank=2))
    assert not (tmp_path / "none.safetensors").exists()


def test_extract_from_diffusers_folders_round_trips_through_merge(tmp_path: Path) -> None:
    """Folders in diffusers layout: the extracted LoRA, merged back into the base, gives the tuned weights."""
    import json

    from diffusers import UNet2DConditionModel

    from tests.fixtures.models import tiny_sd1

    gen = torch.Generator().manual_seed(9)
    for name, change in (("base", False), ("tuned", True)):
        models = tiny_sd1(seed=0)
        if change:
            with torch.no_grad():
                q = models["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
                q += 0.05 * torch.randn(q.shape[0], 2, generator=gen) @ torch.randn(2, q.shape[1], generator=gen)
        models["unet"].save_pretrained(tmp_path / name / "unet")
        models["text_encoder"].save_pretrained(tmp_path / name / "text_encoder")
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    report = extract_lora(tmp_path / "tuned", tmp_path / "base", tmp_path / "x.safetensors", RankTarget(rank=8),
                          min_diff=1e-7)
    assert [(m.key, m.rank) for m in report.modules] == [
        ("unet/down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 2)]
    rebuilt = merge_checkpoint(tmp_path / "base", [report.output], tmp_path / "rebuilt").output
    ours = UNet2DConditionModel.from_pretrained(rebuilt / "unet").state_dict()
    tuned = UNet2DConditionModel.from_pretrained(tmp_path / "tuned" / "unet").state_dict()
    for key, tensor in tuned.items():
        torch.testing.assert_close(ours[key], tensor, rtol=0, atol=2e-6, msg=key)
