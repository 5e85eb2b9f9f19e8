"""The Cog predictor (predict.py + cog.yaml at the repository root) as Cog sees it: cog's own
inspector accepts the class and its inputs and enforces their constraints and choices, and a
prediction with `<1>` and a local LoRA returns image files with the LoRA applied."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from tests.serve.conftest import Served

cog_inspector = pytest.importorskip("cog._inspector")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def predictor_info() -> Any:
    sys.path.insert(0, str(REPO))
    try:
        with pytest.warns(DeprecationWarning):  # cog 0.23 prefers BaseRunner.run; predict() still works everywhere
            return cog_inspector.create_predictor("predict", "Predictor")
    finally:
        sys.path.remove(str(REPO))


def test_cog_yaml_points_at_the_predictor() -> None:
    config = yaml.safe_load((REPO / "cog.yaml").read_text())
    assert config["predict"] == "predict.py:Predictor"
    assert config["build"]["python_version"] == "3.11"
    assert any(p.startswith("diffusers==") for p in config["build"]["python_packages"])


def test_cog_accepts_the_inputs_and_enforces_their_limits(predictor_info: Any) -> None:
    names = set(predictor_info.inputs)
    assert {"prompt", "lora_urls", "lora_scales", "lora_weights", "lora_scale", "extra_lora", "extra_lora_scale",
            "aspect_ratio", "guidance_scale", "num_inference_steps", "scheduler", "num_outputs", "seed",
            "output_format", "output_quality", "negative_prompt", "width", "height"} == names
    values = cog_inspector.check_input(predictor_info.inputs, {"prompt": "a <1>"})
    assert values["lora_scales"] == "0.5" and values["scheduler"] == "K_EULER_ANCESTRAL"
    for bad in ({"extra_lora_scale": 2.5}, {"scheduler": "PNDM"}, {"output_format": "gif"}, {"num_outputs": 5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cog_inspector.check_input(predictor_info.inputs, {"prompt": "x", **bad})


def test_predict_makes_images_with_the_lora(predictor_info: Any, served: Served) -> None:
    sys.path.insert(0, str(REPO))
    try:
        import predict
    finally:
        sys.path.remove(str(REPO))
    predictor = predict.Predictor()
    predictor.service = served.service  # setup() loads a model; this test shares the one already loaded
    values = cog_inspector.check_input(predictor_info.inputs, {
        "prompt": "a <1>", "lora_urls": "demo_warm", "lora_scales": "0.7", "num_inference_steps": 3,
        "width": 64, "height": 64, "num_outputs": 2, "seed": 12})
    paths = predictor.predict(**values)
    assert [Path(p).suffix for p in paths] == [".png", ".png"]
    with Image.open(paths[0]) as image:
        fields = parse_infotext(image.info["parameters"])
    assert fields["Seed"] == "12" and list(parse_lora_hashes(fields["Lora hashes"])) == ["demo_warm"]
    assert fields["Prompt"].startswith("a warm tones <lora:demo_warm:0.7>")
    values["lora_urls"] = "/etc/hostname"
    with pytest.raises(ValueError, match="outside the LoRA folders"):
        predictor.predict(**values)
