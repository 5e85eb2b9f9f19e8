"""A1111's hires fix over `POST /sdapi/v1/txt2img` against a started server: `webuiapi`'s txt2img
with `enable_hr` gives exactly the engine's own hires image (at the hires size, with A1111's hires
infotext fields), per-image LoRA batches keep working, and bad hires values are 422s naming the
field before the queue, the weights left as they were."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from loraprompt.infotext import parse_infotext
from loraprompt.ui.hires import HiresOptions
from loraprompt.ui.txt2img import Txt2ImgRequest
from tests.serve.conftest import Served


def rgb(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def post(served: Served, **body: Any) -> requests.Response:
    return requests.post(f"{served.url}/sdapi/v1/txt2img", timeout=300, json={
        "prompt": "a cat", "seed": 4, "steps": 2, "width": 64, "height": 64, "enable_hr": True, **body})


def test_webuiapi_hires_gives_the_engines_hires_image_at_the_hires_size(served: Served) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=served.port, sampler="Euler", steps=3)
    result = api.txt2img(prompt="a cat <lora:demo_warm:0.8>", seed=21, width=64, height=64, cfg_scale=5,
                         enable_hr=True, hr_scale=1.5, hr_upscaler=webuiapi.HiResUpscaler.Latent,
                         hr_second_pass_steps=2, denoising_strength=0.6)

    image = result.images[0]
    assert image.size == (96, 96)
    fields = parse_infotext(result.info["infotexts"][0])
    assert (fields["Size-1"], fields["Size-2"]) == ("64", "64")  # A1111 writes the first pass's size, and the hires fields after it
    assert (fields["Hires upscale"], fields["Hires steps"], fields["Hires upscaler"], fields["Denoising strength"]) \
        == ("1.5", "2", "Latent", "0.6")
    assert result.info["denoising_strength"] == 0.6 and result.info["width"] == 64
    assert result.info["extra_generation_params"]["Hires upscaler"] == "Latent"
    assert not any("enable_hr" in w for w in result.info["warnings"])
    assert result.parameters["enable_hr"] is True and result.parameters["hr_scale"] == 1.5
    assert image.info["parameters"] == result.info["infotexts"][0]
    alone = served.engine.generate(Txt2ImgRequest(
        "a cat <lora:demo_warm:0.8>", "", 3, 5, 21, 64, 64, "Euler",
        hires=HiresOptions("Latent", 1.5, steps=2, denoising_strength=0.6)), save=False)
    assert np.array_equal(rgb(image), rgb(alone.image))
    assert result.info["infotexts"][0] == alone.infotext


def test_a_per_image_lora_batch_with_hires_resize_gives_each_engine_image(served: Served) -> None:
    prompts = ["a cat <lora:demo_warm:0.7>", "a cat <lora:demo_sketch:0.5>"]
    response = post(served, prompt=prompts, batch_size=2, sampler_name="Euler", hr_upscaler="Lanczos",
                    hr_resize_x=96, hr_resize_y=80, hr_prompt="a dog", hr_negative_prompt="blurry")
    assert response.status_code == 200, response.text
    data = response.json()
    info = json.loads(data["info"])
    assert info["all_seeds"] == [4, 5]
    for i, (prompt, b64) in enumerate(zip(prompts, data["images"])):
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert image.size == (96, 80)
        fields = parse_infotext(info["infotexts"][i])
        assert (fields["Hires resize-1"] + "x" + fields["Hires resize-2"], fields["Hires upscaler"], fields["Hires prompt"], fields["Hires negative prompt"],
                fields["Denoising strength"]) == ("96x80", "Lanczos", "a dog", "blurry", "0.75")  # 0.75 when not given
        assert "Hires steps" not in fields  # 0: as many as the first pass, not written (A1111)
        alone = served.engine.generate(Txt2ImgRequest(
            prompt, "", 2, 7, 4 + i, 64, 64, "Euler", hires=HiresOptions(
                "Lanczos", resize_x=96, resize_y=80, denoising_strength=0.75, prompt="a dog", negative_prompt="blurry")),
            save=False)
        assert np.array_equal(rgb(image), rgb(alone.image))
    assert info["loras"][0][0]["name"] == "demo_warm" and info["loras"][1][0]["name"] == "demo_sketch"


def test_without_enable_hr_the_hires_fields_change_nothing(served: Served) -> None:
    plain = post(served, enable_hr=False).json()
    with_fields = post(served, enable_hr=False, hr_scale=3, hr_upscaler="Nearest", hr_second_pass_steps=7).json()
    assert plain["images"] == with_fields["images"]
    info = json.loads(with_fields["info"])
    assert info["warnings"] == [] and info["denoising_strength"] is None
    assert "Hires" not in info["infotexts"][0]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler", "Lanczos"),
    ({"hr_scale": 0.5}, "hr_scale", "from 1 to 8"),
    ({"hr_scale": 20}, "hr_scale", "from 1 to 8"),
    ({"width": 512, "height": 512, "hr_scale": 1.5}, "hr_scale", "--max-size"),
    ({"hr_resize_x": 1024}, "hr_resize_x", "--max-size"),
    ({"hr_resize_y": -8}, "hr_resize_y", "negative"),
    ({"hr_second_pass_steps": 61}, "hr_second_pass_steps", "--max-steps"),
    ({"denoising_strength": 0}, "denoising_strength", "greater than 0"),
    ({"denoising_strength": 1.5}, "denoising_strength", "at most 1"),
    ({"hr_checkpoint_name": "sd_xl_base_1.0.safetensors"}, "hr_checkpoint_name", "cannot switch"),
    ({"hr_sampler_name": "DPM adaptive"}, "hr_sampler_name", "unknown sampler"),
    ({"hr_scheduler": "polyexponential"}, "hr_scheduler", "unknown scheduler"),
])
def test_bad_hires_values_are_422_naming_the_field_before_the_queue(served: Served, body: dict[str, Any], field: str,
                                                                    words: str) -> None:
    response = post(served, prompt="a cat <lora:demo_warm:0.8>", **body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and words in detail["msg"], detail
    assert served.is_pristine()


def test_hires_settings_the_engine_does_not_run_are_named_and_the_same_ones_are_not(served: Served) -> None:
    same = json.loads(post(served, sampler_name="Euler", hr_sampler_name="Euler", hr_checkpoint_name="Use same checkpoint",
                           hr_cfg=7).json()["info"])
    assert same["warnings"] == []
    other = json.loads(post(served, sampler_name="Euler", hr_sampler_name="DPM++ 2M", hr_cfg=3).json()["info"])
    warnings = "\n".join(other["warnings"])
    assert "hr_sampler_name='DPM++ 2M'" in warnings and "hr_cfg=3" in warnings and "first pass" in warnings
