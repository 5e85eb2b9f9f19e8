"""A trained LoRA in the A1111 stand-in (tests/extension/fake_webui) through the extension: it
applies to the LDM-named model and is undone by the next prompt, and its bundled token is in A1111's
embedding database exactly while the LoRA is in the prompt."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraprompt.train import TrainConfig, train
from loraprompt.train.model import Base
from tests.extension.conftest import Webui, webui
from tests.extension.ldm import changed, snapshot

from .conftest import sd1_base

__all__ = ["webui"]


def stand_in_shaped(folder: Path) -> Base:
    """The tiny SD1 pipeline with a UNet shaped like the stand-in's LDM model (width 8 in
    input_blocks.1.1 and middle_block.1), so every module the stand-in has receives a delta."""
    from diffusers import UNet2DConditionModel

    base = sd1_base(folder)
    torch.manual_seed(0)
    base.pipe.unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
        attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    return base


def test_trained_lora_applies_in_the_a1111_stand_in(webui: Webui, tmp_path: Path, images: Path) -> None:
    out = tmp_path / "trained.safetensors"
    train(TrainConfig(images=str(images), output=str(out), steps=2, rank=2, resolution=32, sample_steps=1,
                      lr=1e-2), base=stand_in_shaped(tmp_path / "tok"))
    shutil.copy(out, webui.lora_dir / out.name)
    webui.load_extension()
    webui.start()
    before = snapshot(webui.sd_model)
    result = webui.generate("a photo <lora:trained:1>")
    assert "E-LORA" not in result.extra_generation_params.get("loraprompt", ""), result.comments
    moved = changed(webui.sd_model, before)
    for module in ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "middle_block.1.transformer_blocks.0.attn2.to_k",
                   "text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.out_proj"):
        assert any(module in k for k in moved), (module, moved)
    webui.generate("no tags")
    assert changed(webui.sd_model, before) == []


def test_bundled_token_is_registered_while_its_lora_is_active(webui: Webui, tmp_path: Path, images: Path) -> None:
    out = tmp_path / "piv.safetensors"
    train(TrainConfig(images=str(images), output=str(out), steps=2, rank=2, resolution=32, sample_steps=1,
                      pivotal=True, token="<s1>"), base=stand_in_shaped(tmp_path / "tok"))
    shutil.copy(out, webui.lora_dir / out.name)
    vector = load_file(str(out))["bundle_emb.<s1>.string_to_param.*"]
    webui.load_extension()
    webui.start()
    db = importlib.import_module("modules.sd_hijack").model_hijack.embedding_db
    webui.generate("a photo of <s1> <lora:piv:1>")
    embedding = db.word_embeddings["<s1>"]
    assert torch.equal(embedding.vec, vector) and embedding.vectors == 1 and embedding.shape == 16
    assert embedding.shorthash == "piv"
    # A1111's Textual Inversion page splits each embedding's filename and lists its folder: the LoRA's
    assert os.path.samefile(embedding.filename, webui.lora_dir / out.name)
    webui.generate("a photo of <s1>")  # the LoRA left the prompt: so did its token
    assert "<s1>" not in db.word_embeddings

    textual_inversion = importlib.import_module("modules.textual_inversion.textual_inversion")
    mine = textual_inversion.Embedding(torch.ones(1, 16), "<s1>")
    db.register_embedding(mine, webui.sd_model)  # an embedding file of the same name wins, as in A1111
    result = webui.generate("a photo of <s1> <lora:piv:1>")
    assert db.word_embeddings["<s1>"] is mine and "W-EMBEDDING-SKIPPED" in result.extra_generation_params["loraprompt"]
