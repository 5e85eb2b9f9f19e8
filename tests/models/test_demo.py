"""The built-in demo: built offline from config, deterministic, with demo LoRAs that loraprompt's
own reader, library and patcher accept."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import loraprompt
from loraprompt.models import load_demo
from loraprompt.models.demo import build_demo_pipeline, build_demo_tokenizer, demo_vocab
from loraprompt.models.demo_loras import DEMO_LORAS, kohya_targets

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model, lora_dir = load_demo(tmp_path_factory.mktemp("demo"))
    return model, lora_dir


def _generate(pipe: Any, prompt: str, seed: int) -> np.ndarray:
    image = pipe(prompt, num_inference_steps=3, width=64, height=64, output_type="np",
                 generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image)


def test_demo_pipeline_is_the_same_on_every_build(demo: tuple[Any, Path]) -> None:
    model, _ = demo
    again = build_demo_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(model.pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert model.is_demo and model.family == "sd1"


def test_demo_generation_is_deterministic(demo: tuple[Any, Path]) -> None:
    pipe = demo[0].pipe
    first, second = _generate(pipe, "a red house", 7), _generate(pipe, "a red house", 7)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, _generate(pipe, "a red house", 8))
    assert not np.array_equal(first, _generate(pipe, "a blue boat", 7))  # the prompt reaches the UNet


def test_demo_tokenizer_is_byte_level_clip() -> None:
    tokenizer = build_demo_tokenizer()
    vocab = demo_vocab()
    ids = tokenizer("Ab, é").input_ids
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    # Lower-cased, one token per byte (é is two), `</w>` closing each word, as CLIP's BPE does.
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a", "b</w>", ",</w>", "Ã", "©</w>"]


def test_demo_loras_are_real_kohya_files(demo: tuple[Any, Path]) -> None:
    model, lora_dir = demo
    targets = kohya_targets(model.pipe)
    for spec in DEMO_LORAS:
        path = lora_dir / spec.relpath
        adapter = loraprompt.read_adapter(path)
        assert adapter.family == "sd1"
        expected = {k for k in targets if (spec.te_scale if k.startswith("lora_te_") else spec.unet_scale)}
        assert len(adapter.modules) == len(expected), spec.relpath
        assert path.with_suffix(".preview.png").is_file()
        sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        assert sidecar["activation text"] == spec.activation_text
    library = loraprompt.Library([str(lora_dir)], persist=False)
    entry = library.resolve("demo_neon").entry
    assert entry is not None and entry.relpath == "styles/demo_neon.safetensors"
    assert entry.family == "sd1" and entry.preferred_weight == 0.6 and entry.preview


def test_first_run_files_are_kept_on_later_runs(tmp_path: Path) -> None:
    _, lora_dir = load_demo(tmp_path)
    sidecar = lora_dir / "demo_warm.json"
    sidecar.write_text(json.dumps({"notes": "mine"}), encoding="utf-8")
    before = (lora_dir / "demo_warm.safetensors").read_bytes()
    _, again = load_demo(tmp_path)
    assert again == lora_dir
    assert json.loads(sidecar.read_text(encoding="utf-8")) == {"notes": "mine"}
    assert (lora_dir / "demo_warm.safetensors").read_bytes() == before


def test_demo_lora_changes_the_image_and_restore_is_exact(demo: tuple[Any, Path]) -> None:
    model, lora_dir = demo
    pipe = model.pipe
    base = _generate(pipe, "a cat", 3)
    patcher = loraprompt.Patcher({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    patcher.sync([(loraprompt.read_adapter(lora_dir / "demo_sketch.safetensors"), 1.0, 1.0)])
    patched = _generate(pipe, "a cat", 3)
    patcher.restore()
    assert np.abs(patched - base).mean() > 0.01
    assert np.array_equal(_generate(pipe, "a cat", 3), base)
