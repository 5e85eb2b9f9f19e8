"""The real check: a LoRA trained on tiny SD1 and SDXL pipelines lowers the denoising loss on its
training images (fixed noise and timesteps) when loraprompt applies it, its pivotal token reaches
the text encoders through the diffusers integration, and diffusers loads the same file to the same
weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import loraprompt
from loraprompt.train import TrainConfig, TrainResult, train
from loraprompt.train.model import Base

from .conftest import default_init, denoising_loss, sd1_base, sdxl_base, write_images

BUILDERS = {"sd1": sd1_base, "sdxl": sdxl_base}
CAPTION = "a photo of <s1>"


def fresh(family: str, folder: Path) -> Base:
    return default_init(BUILDERS[family](folder))


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, TrainResult]:
    family = request.param
    root = tmp_path_factory.mktemp(family)
    images = write_images(root / "images")
    config = TrainConfig(images=str(images), output=str(root / "out.safetensors"), steps=50, rank=4, lr=3e-2,
                         lr_te=1.5e-2, lr_token=3e-2, ff=True, resolution=32, sample_steps=1, seed=1, pivotal=True)
    return family, images, train(config, base=fresh(family, root / "tok"))


def _weights(base: Base) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder", "text_encoder_2")
            if getattr(base.pipe, c, None) is not None for k, v in getattr(base.pipe, c).state_dict().items()}


def test_trained_lora_lowers_the_denoising_loss_on_its_images(trained: Any, tmp_path: Path) -> None:
    family, images, result = trained
    base = fresh(family, tmp_path)
    before = _weights(base)
    without = denoising_loss(base, images, CAPTION)
    with loraprompt.activate(base.pipe, f"{CAPTION} <lora:out:1>", library={"out": str(result.output)}) as prompt:
        assert prompt.entries and not [d for d in prompt.diagnostics if d.severity == "error"]
        with_lora = denoising_loss(base, images, str(prompt))
    assert with_lora < 0.95 * without, (with_lora, without)
    after = _weights(base)
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored bit-exactly


def test_pivotal_token_is_bundled_and_applied_by_the_integration(trained: Any, tmp_path: Path) -> None:
    family, _, result = trained
    with safe_open(str(result.output), "pt") as f:
        bundle = sorted(k for k in f.keys() if k.startswith("bundle_emb."))
    parts = ["clip_g", "clip_l"] if family == "sdxl" else ["string_to_param.*"]
    assert bundle == [f"bundle_emb.<s1>.{p}" for p in parts]
    adapter = loraprompt.read_adapter(result.output)
    assert set(adapter.embeddings["<s1>"]) == ({"clip_l", "clip_g"} if family == "sdxl" else {"string_to_param"})
    assert not any(k.startswith("bundle_emb.") for k in adapter.unclaimed)

    base = fresh(family, tmp_path)
    pipe = base.pipe
    towers = [("tokenizer", "text_encoder", "clip_l" if family == "sdxl" else "string_to_param")]
    if family == "sdxl":
        towers.append(("tokenizer_2", "text_encoder_2", "clip_g"))
    originals = {t: (getattr(pipe, t), getattr(pipe, e).get_input_embeddings()) for t, e, _ in towers}

    def hidden(tok: str, enc: str) -> torch.Tensor:
        ids = getattr(pipe, tok)(CAPTION, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return getattr(pipe, enc)(ids)[0]

    plain = {t: hidden(t, e) for t, e, _ in towers}
    with loraprompt.activate(pipe, "<lora:out:0>", library={"out": str(result.output)}):  # token only: LoRA at 0
        for tok, enc, part in towers:
            ids = getattr(pipe, tok)("<s1>", add_special_tokens=False).input_ids
            assert len(ids) == 1
            row = getattr(pipe, enc).get_input_embeddings().weight[ids[0]]
            assert torch.equal(row, adapter.embeddings["<s1>"][part][0].to(row.dtype))
            assert not torch.allclose(hidden(tok, enc), plain[tok])  # the token changes the text embedding
    for tok, enc, _ in towers:
        assert getattr(pipe, tok) is originals[tok][0]
        assert getattr(pipe, enc).get_input_embeddings() is originals[tok][1]
        assert torch.equal(hidden(tok, enc), plain[tok])


def test_diffusers_load_lora_weights_gives_the_weights_loraprompt_applies(trained: Any, tmp_path: Path) -> None:
    family, _, result = trained
    ours, theirs = fresh(family, tmp_path / "a"), fresh(family, tmp_path / "b")
    # diffusers refuses keys without "lora" in them: the bundled embedding is loraprompt's/A1111's part
    state = {k: v for k, v in load_file(str(result.output)).items() if not k.startswith("bundle_emb.")}
    theirs.pipe.load_lora_weights(state)
    theirs.pipe.fuse_lora(lora_scale=1.0)
    components = {c: getattr(ours.pipe, c) for c in ("unet", "text_encoder", "text_encoder_2")
                  if getattr(ours.pipe, c, None) is not None}
    report = loraprompt.Patcher(components).sync([(loraprompt.read_adapter(result.output), 1.0, 1.0)])
    assert report.diagnostics == [] or all(d.severity != "error" for d in report.diagnostics)
    untouched = fresh(family, tmp_path / "c").pipe
    changed = 0
    for name, module in components.items():
        mine = module.state_dict()
        other = {k.replace(".base_layer", ""): v for k, v in getattr(theirs.pipe, name).state_dict().items()
                 if "lora_" not in k}
        for key, value in mine.items():
            assert torch.allclose(value, other[key], atol=1e-5), (name, key)
        base_state = getattr(untouched, name).state_dict()
        changed += sum(not torch.equal(v, base_state[k]) for k, v in mine.items())
    assert changed > 0
