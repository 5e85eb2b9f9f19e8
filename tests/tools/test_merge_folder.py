"""merge into a diffusers folder: weights merged like the patcher's, every other file copied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel

from loraprompt.adapters import read_adapter
from loraprompt.errors import ToolError
from loraprompt.patcher import Patcher
from loraprompt.tools.io import RECIPE_KEY, load_tensors
from loraprompt.tools.merge import merge_checkpoint
from tests.fixtures.loras import write_kohya_lora
from tests.fixtures.models import tiny_sd1


def _folder(root: Path) -> Path:
    models = tiny_sd1(seed=0)
    models["unet"].save_pretrained(root / "unet")
    models["text_encoder"].save_pretrained(root / "text_encoder")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    return root


def test_folder_merge_equals_patcher_and_copies_the_rest(tmp_path: Path) -> None:
    src = _folder(tmp_path / "model")
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    report = merge_checkpoint(src, [(lora, 0.5, 1.5)], tmp_path / "merged")
    assert report.layout == "diffusers" and report.weights_changed > 40
    _assert_folder_is_patched_sd1(report.output, lora, same_keys=False)
    assert (report.output / "scheduler" / "scheduler_config.json").read_text() == "{}"
    _, meta = load_tensors(report.output / "unet" / "diffusion_pytorch_model.safetensors")
    assert json.loads(meta[RECIPE_KEY])["loras"][0]["unet"] == 1.5
    assert not list(tmp_path.glob(".merged*"))


def test_folder_output_needs_force_and_bad_lora_leaves_nothing(tmp_path: Path) -> None:
    src = _folder(tmp_path / "model")
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ToolError, match="--force"):
        merge_checkpoint(src, [lora], out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ToolError, match="not a diffusers model"):  # --force replaces outputs, not the user's files
        merge_checkpoint(src, [lora], out, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    merge_checkpoint(src, [lora], out, force=True)  # an empty folder is replaced
    (out / "stale.txt").write_text("a previous output's")
    merge_checkpoint(src, [lora], out, force=True)
    assert not (out / "stale.txt").exists() and (out / "unet").is_dir()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 7)
    from loraprompt.errors import AdapterFileError

    with pytest.raises(AdapterFileError, match="broken"):
        merge_checkpoint(src, [broken], tmp_path / "other")
    assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".other*"))


def test_single_file_merged_into_a_diffusers_folder(tmp_path: Path) -> None:
    """Other layout: the single file's merge, converted by diffusers' own key tables, loads back
    into diffusers/transformers models equal to the patcher's."""
    from tests.tools.checkpoints import a1111_models, write_single_file

    ckpt = tmp_path / "model.safetensors"
    tiny = a1111_models("sd1")
    write_single_file(tiny, "sd1", ckpt)
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    configs = {"model_index": {"_class_name": "StableDiffusionPipeline"}, "unet": dict(tiny["unet"].config),
               "text_encoder": tiny["text_encoder"].config.to_dict()}
    report = merge_checkpoint(ckpt, [(lora, 0.5, 1.5)], tmp_path / "folder", layout="diffusers", configs=configs)
    assert report.layout == "diffusers"
    _assert_folder_is_patched_sd1(report.output, lora, same_keys=True)
    assert json.loads((report.output / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_sdxl_single_file_to_diffusers_unfuses_openclip(tmp_path: Path) -> None:
    """SDXL's OpenCLIP encoder (fused q/k/v) comes out as transformers' CLIPTextModelWithProjection."""
    from transformers import CLIPTextModelWithProjection

    from tests.fixtures.loras import FAMILIES
    from tests.tools.checkpoints import a1111_models, write_single_file

    ckpt = tmp_path / "model.safetensors"
    tiny = a1111_models("sdxl")
    write_single_file(tiny, "sdxl", ckpt)
    lora = write_kohya_lora("sdxl", tmp_path / "a.safetensors", seed=3).path
    reference = FAMILIES["sdxl"](seed=0)
    configs = {"model_index": {"_class_name": "StableDiffusionXLPipeline"}, "unet": dict(tiny["unet"].config),
               "text_encoder": tiny["text_encoder"].config.to_dict(),
               "text_encoder_2": reference["text_encoder_2"].config.to_dict()}
    report = merge_checkpoint(ckpt, [(lora, 1.0, 1.0)], tmp_path / "folder", layout="diffusers", configs=configs)
    Patcher(reference).sync([(read_adapter(lora), 1.0, 1.0)])
    te2 = CLIPTextModelWithProjection.from_pretrained(report.output / "text_encoder_2")
    ours, theirs = te2.state_dict(), reference["text_encoder_2"].state_dict()
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key


def test_folder_merged_into_a_single_file(tmp_path: Path) -> None:
    """Other layout: a diffusers folder's merge as one original-layout file, equal to the patcher's
    weights in single-file names (VAE included, unchanged)."""
    from diffusers import AutoencoderKL

    from tests.tools.checkpoints import single_file_keys

    src = _folder(tmp_path / "model")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4).save_pretrained(src / "vae")
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    report = merge_checkpoint(src, [(lora, 0.5, 1.5)], tmp_path / "one.safetensors", layout="single-file",
                              dtype="fp16")
    assert report.layout == "single-file"
    models = {c: m.half() for c, m in tiny_sd1(seed=0).items()}  # fp16 output: the patcher on an fp16 model
    Patcher(models).sync([(read_adapter(lora), 0.5, 1.5)])
    merged, meta = load_tensors(report.output)
    states = {c: m.state_dict() for c, m in models.items()}
    for key, (component, own) in single_file_keys(models, "sd1").items():
        assert merged[key].dtype == torch.float16
        assert torch.equal(merged[key], states[component][own]), key
    assert merged["first_stage_model.encoder.mid.attn_1.q.weight"].dim() == 4
    assert json.loads(meta[RECIPE_KEY])["layout"] == "single-file"


def test_reader_closes_what_it_opened_when_a_file_is_gone(tmp_path: Path) -> None:
    from loraprompt.tools.checkpoint import TensorReader, open_checkpoint

    ckpt = open_checkpoint(_folder(tmp_path / "model"))
    first, last = ckpt.files[0].path, ckpt.files[-1].path
    assert first != last
    last.unlink()
    reader = TensorReader(ckpt)
    with pytest.raises(FileNotFoundError, match=last.name):
        reader.__enter__()
    assert reader._handles[first].closed


def _assert_folder_is_patched_sd1(folder: Path, lora: Path, *, same_keys: bool) -> None:
    """The folder's UNet and text encoder equal tiny SD1 patched with `lora` at te 0.5, unet 1.5."""
    models = tiny_sd1(seed=0)
    Patcher(models).sync([(read_adapter(lora), 0.5, 1.5)])
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    for loaded, patched in ((unet, models["unet"]), (te, models["text_encoder"])):
        ours, theirs = loaded.state_dict(), patched.state_dict()
        if same_keys:
            assert sorted(ours) == sorted(theirs)
        for key, tensor in theirs.items():
            assert torch.equal(ours[key], tensor), key


def test_an_output_inside_the_input_folder_is_refused(tmp_path: Path) -> None:
    """`-o model/merged` for the folder `model`: the copy of the folder's other files took in the
    half-written output's staging folder, so the result held a stray `.merged.partial` copy."""
    src = _folder(tmp_path / "model")
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    with pytest.raises(ToolError, match="inside the input folder"):
        merge_checkpoint(src, [(lora, 0.5, 1.0)], src / "merged")
    assert not (src / "merged").exists() and not list(src.glob(".merged*"))

