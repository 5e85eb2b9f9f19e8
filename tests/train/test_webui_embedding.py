"""The web UI's txt2img engine uses a LoRA's bundled token: trained with --pivotal on the demo
model (the tiny test UNets barely listen to the text), `<s1>` changes the picture only while the LoRA is in the prompt (even at strength 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import loraprompt
from loraprompt.models import load_demo
from loraprompt.train import TrainConfig, train
from loraprompt.train.model import Base
from loraprompt.ui.txt2img import Txt2Img, Txt2ImgRequest


def test_bundled_token_reaches_the_webui_prompt_encoding(tmp_path: Path, images: Path) -> None:
    model, lora_dir = load_demo(tmp_path / "demo")
    train(TrainConfig(images=str(images), output=str(lora_dir / "piv.safetensors"), steps=1, rank=2,
                      resolution=64, sample_steps=1, pivotal=True, lr_token=0.5),
          base=Base(model.pipe, "sd1", model.name, is_demo=True))
    model, _ = load_demo(tmp_path / "demo")  # a fresh pipeline: the one trained on carries peft layers
    engine = Txt2Img(model, loraprompt.Library([str(lora_dir)], cache_dir=str(tmp_path / "cache")), tmp_path / "out")

    def image(prompt: str) -> np.ndarray:
        result = engine.generate(Txt2ImgRequest(prompt, steps=2, seed=5, width=64, height=64))
        assert not [d for d in result.diagnostics if d.severity in ("error", "warning")], result.diagnostics
        return np.asarray(result.image, dtype=np.float32)

    without = image("a photo of <s1>")
    token_only = image("a photo of <s1> <lora:piv:0>")  # strength 0: only the bundled embedding acts
    again = image("a photo of <s1>")
    assert np.abs(token_only - without).mean() > 0.5
    assert np.array_equal(again, without)
    tokenizer = model.pipe.tokenizer
    assert "<s1>" not in tokenizer.get_added_vocab()  # the engine's tokenizer is back to the original
