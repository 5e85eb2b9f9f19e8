"""Diffusers folders holding variant weights (`*.fp16.safetensors`) beside the model's own, and shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from loraprompt.cli import main
from loraprompt.errors import ToolError
from loraprompt.tools.checkpoint import open_checkpoint
from loraprompt.tools.extract import extract_lora
from loraprompt.tools.io import RECIPE_KEY
from loraprompt.tools.merge import merge_checkpoint
from loraprompt.tools.svd import RankTarget
from tests.fixtures.models import tiny_sd1


def load_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


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
    with pytest.raises(ToolError, match=r"diffusion_pytorch_model\.fp16\.safetensors.*--variant fp16"):
        open_checkpoint(tmp_path / "m")


def test_a_variant_is_read_when_asked_for(tmp_path: Path) -> None:
    _folder(tmp_path / "base", False)
    _folder(tmp_path / "tuned", True)
    ckpt = open_checkpoint(tmp_path / "base", "fp16")
    assert all(".fp16" in f.path.name for f in ckpt.files)
    assert all(dtype == torch.float16 for f in ckpt.files for dtype, _ in f.specs.values())
    report = extract_lora(tmp_path / "tuned", tmp_path / "base", tmp_path / "x.safetensors", RankTarget(rank=4),
                          variant="fp16")
    assert [m.key for m in report.modules] == ["unet/down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    out = merge_checkpoint(tmp_path / "base", [report.output], tmp_path / "merged", variant="fp16").output
    assert not (out / "unet" / "diffusion_pytorch_model.safetensors").exists()  # the plain weights stay unmerged
    got = UNet2DConditionModel.from_pretrained(out / "unet", variant="fp16").state_dict()
    expected = UNet2DConditionModel.from_pretrained(tmp_path / "tuned" / "unet", variant="fp16").state_dict()
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=1e-3 if key == Q else 0)
    # the recipe says which weights were read: the fp32 ones would give another result
    assert json.loads(load_metadata(report.output)[RECIPE_KEY])["variant"] == "fp16"
    merged_recipe = json.loads(load_metadata(out / "unet" / "diffusion_pytorch_model.fp16.safetensors")[RECIPE_KEY])
    assert merged_recipe["variant"] == "fp16"
    with pytest.raises(ToolError, match="non_ema"):
        open_checkpoint(tmp_path / "base", "non_ema")


def test_cli_variant_reaches_the_folder_and_is_refused_where_it_means_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sd1_inputs: dict[str, Path]) -> None:
    _folder(tmp_path / "base", False)
    lora = str(sd1_inputs["lora"])
    assert main(["merge", "--checkpoint", str(tmp_path / "base"), lora, "--variant", "fp16",
                 "-o", str(tmp_path / "m"), "--quiet"]) == 0
    assert (tmp_path / "m" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert main(["merge", lora, lora, "--variant", "fp16", "-o", str(tmp_path / "l.safetensors"), "--quiet"]) == 1
    assert "--variant" in capsys.readouterr().err
    assert main(["merge", "--checkpoint", str(sd1_inputs["checkpoint"]), lora, "--variant", "fp16",
                 "-o", str(tmp_path / "s.safetensors"), "--quiet"]) == 1
    assert "diffusers folders" in capsys.readouterr().err
