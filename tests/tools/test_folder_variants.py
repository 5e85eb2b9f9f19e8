"""Diffusers folders holding variant weights (`*.fp16.safetensors`) beside the model's own, and shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

from loraprompt.errors import ToolError
from loraprompt.tools.checkpoint import open_checkpoint
from loraprompt.tools.extract import extract_lora
from loraprompt.tools.merge import merge_checkpoint
from loraprompt.tools.svd import RankTarget
from tests.fixtures.models import tiny_sd1

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"


def _folder(root: Path, tuned: bool, *, shard: bool = False) -> dict[str, torch.Tensor]:
    """A tiny SD1 folder as hub repos ship it: fp32 weights with an fp16 variant beside them."""
    models = tiny_sd1(seed=0)
    if tuned:
        gen = torch.Generator().manual_seed(9)
        with torch.no_grad():
            q = models["unet"].get_parameter(Q)
            q += 0.05 * torch.randn(q.shape[0], 2, generator=gen) @ torch.randn(2, q.shape[1], generator=gen)
    size = "20KB" if shard else "10GB"
    for name in ("unet", "text_encoder"):
        models[name].save_pretrained(root / name, max_shard_size=size)
        models[name].half().save_pretrained(root / name, variant="fp16", max_shard_size=size)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {k: v.float() for k, v in UNet2DConditionModel.from_pretrained(root / "unet").state_dict().items()}


@pytest.mark.parametrize("shard", [False, True])
def test_variant_files_are_not_read_as_shards(tmp_path: Path, shard: bool) -> None:
    base = _folder(tmp_path / "base", False, shard=shard)
    tuned = _folder(tmp_path / "tuned", True, shard=shard)
    ckpt = open_checkpoint(tmp_path / "base")
    assert not any(".fp16" in f.path.name for f in ckpt.files)
    assert all(dtype == torch.float32 for f in ckpt.files for dtype, _ in f.specs.values())
    assert (len([f for f in ckpt.files if f.path.parent.name == "unet"]) > 1) == shard
    report = extract_lora(tmp_path / "tuned", tmp_path / "base", tmp_path / "x.safetensors", RankTarget(rank=4))
    assert [m.key for m in report.modules] == ["unet/down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    out = merge_checkpoint(tmp_path / "base", [report.output], tmp_path / "merged").output
    assert not [p.name for p in out.rglob("*") if ".fp16" in p.name]  # a variant would hold the unmerged weights
    got = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()  # diffusers' own reading
    for key, expected in tuned.items():
        torch.testing.assert_close(got[key], expected, rtol=0, atol=2e-6 if key == Q else 0)
    assert not torch.equal(base[Q], tuned[Q])


def test_a_folder_with_only_variant_weights_is_refused_naming_them(tmp_path: Path) -> None:
    _folder(tmp_path / "m", False)
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ToolError, match=r"diffusion_pytorch_model\.fp16\.safetensors"):
        open_checkpoint(tmp_path / "m")
