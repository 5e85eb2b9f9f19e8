"""The HTTP APIs on a flow-matching model (a tiny Flux.1-dev diffusers folder built from config,
tests/fixtures/dit_pipelines.py, behind the real FastAPI app and uvicorn): the samplers and
schedulers listed are the model's own, A1111's sampler_name + scheduler and Replicate's
scheduler resolve to them, Forge's `distilled_cfg_scale` and Replicate's `guidance` reach the
transformer, and an API image equals the engine's for the same request."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library.hashes import file_hashes
from loraprompt.ui.txt2img import Txt2Img, Txt2ImgRequest
from tests.fixtures.dit import write_peft
from tests.fixtures.dit_pipelines import save_dit_pipeline
from tests.serve.conftest import ServerThread

TINY = {"steps": 2, "width": 64, "height": 64, "seed": 5}


class Flux:
    def __init__(self, url: str, engine: Txt2Img, lora: Path) -> None:
        self.url, self.engine, self.lora = url, engine, lora


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flux]:
    import loraprompt
    from loraprompt.models import load_model
    from loraprompt.serve.app import build_app
    from loraprompt.serve.service import Service

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve-flux")
    folder = save_dit_pipeline("flux", root / "tiny-flux")
    lora = root / "Lora" / "flux_style.safetensors"
    write_peft("flux", lora)
    engine = Txt2Img(load_model(folder), loraprompt.Library([str(root / "Lora")], cache_dir=str(root / "cache")),
                     root / "outputs")
    service = Service(engine, download_dir=root / "downloads")
    server = ServerThread(build_app(service))
    try:
        yield Flux(server.url, engine, lora)
    finally:
        server.stop()
        service.close()
        torch.set_num_threads(before)


def txt2img(flux: Flux, **body: Any) -> requests.Response:
    return requests.post(f"{flux.url}/sdapi/v1/txt2img", json={**TINY, **body}, timeout=120)


def image_of(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64.partition(",")[2] or b64)))


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_samplers_and_schedulers_are_the_models_own(flux: Flux) -> None:
    samplers = {s["name"]: s for s in requests.get(f"{flux.url}/sdapi/v1/samplers", timeout=10).json()}
    assert list(samplers) == ["Euler", "DPM++ 2M", "DPM++ 2M SDE", "UniPC"]  # Flux: no Heun (explicit sigmas)
    assert samplers["Euler"]["options"] == {"scheduler": "simple"}
    assert samplers["Euler"]["aliases"] == ["Euler Simple", "Euler Karras", "Euler Exponential", "Euler Beta"]
    schedulers = [s["name"] for s in requests.get(f"{flux.url}/sdapi/v1/schedulers", timeout=10).json()]
    assert schedulers == ["automatic", "simple", "karras", "exponential", "beta"]


def test_sampler_name_and_scheduler_give_the_engines_image(flux: Flux) -> None:
    response = txt2img(flux, prompt="a red fox", sampler_name="Euler", scheduler="karras", cfg_scale=1,
                       distilled_cfg_scale=2.5)
    assert response.status_code == 200, response.text
    out = response.json()
    info = json.loads(out["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("Euler", "karras")
    assert info["infotexts"][0].splitlines()[-1].startswith(
        "Steps: 2, Sampler: Euler, Schedule type: Karras, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 5, Size: 64x64")
    direct = flux.engine.generate(Txt2ImgRequest("a red fox", steps=2, width=64, height=64, seed=5, cfg_scale=1.0,
                                                 sampler="Euler Karras", distilled_cfg_scale=2.5))
    assert np.array_equal(pixels(image_of(out["images"][0])), pixels(direct.image))
    # the distilled guidance reaches the transformer: another value, another image
    other = txt2img(flux, prompt="a red fox", sampler_name="Euler", scheduler="karras", cfg_scale=1,
                    distilled_cfg_scale=8).json()
    assert not np.array_equal(pixels(image_of(other["images"][0])), pixels(direct.image))


def test_a1111_defaults_take_the_models_default_schedule(flux: Flux) -> None:
    # A1111's body defaults: sampler_index "Euler", no scheduler -> Flux's Euler with its Simple schedule
    info = json.loads(txt2img(flux, prompt="a fox", cfg_scale=1).json()["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("Euler", "simple")
    assert "Schedule type: Simple" in info["infotexts"][0]
    combined = json.loads(txt2img(flux, prompt="a fox", cfg_scale=1, sampler_name="DPM++ 2M Simple").json()["info"])
    assert combined["sampler_name"] == "DPM++ 2M"


@pytest.mark.parametrize(("body", "loc", "choice"), [
    ({"sampler_name": "Euler a"}, ["body", "sampler_name"], "Euler"),
    ({"sampler_name": "Euler", "scheduler": "uniform"}, ["body", "scheduler"], "beta"),
    ({"sampler_name": "DPM++ 2M", "scheduler": "karras"}, ["body", "scheduler"], "simple"),
    ({"distilled_cfg_scale": -1}, ["body", "distilled_cfg_scale"], None),
])
def test_what_the_model_lacks_is_422_listing_its_choices(flux: Flux, body: dict[str, Any], loc: list[str],
                                                         choice: str | None) -> None:
    response = txt2img(flux, prompt="a fox", **body)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    if choice is not None:
        assert choice in detail["ctx"]["choices"]
        assert "for this model" in detail["msg"] or "has no" in detail["msg"]


def test_a_clip_skip_is_422_on_flux_and_options_keep_theirs(flux: Flux) -> None:
    """Flux.1 reads its text encoders as trained (the engine refuses a clip skip): one asked for was
    a 500 per request, and set through /options it made every later request fail."""
    response = txt2img(flux, prompt="a fox", override_settings={"CLIP_stop_at_last_layers": 2})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "override_settings", "CLIP_stop_at_last_layers"] and detail["ctx"]["maximum"] == 1
    refused = requests.post(f"{flux.url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, timeout=10)
    assert refused.status_code == 422 and "as trained" in refused.json()["detail"][0]["msg"]
    assert requests.get(f"{flux.url}/sdapi/v1/options", timeout=10).json()["CLIP_stop_at_last_layers"] == 1
    assert txt2img(flux, prompt="a fox", override_settings={"CLIP_stop_at_last_layers": 1}).status_code == 200


def test_lora_tag_through_the_api_is_applied_and_hashed(flux: Flux) -> None:
    out = txt2img(flux, prompt="a fox <lora:flux_style:0.8>", cfg_scale=1).json()
    plain = txt2img(flux, prompt="a fox", cfg_scale=1).json()
    fields = parse_infotext(json.loads(out["info"])["infotexts"][0])
    assert parse_lora_hashes(fields["Lora hashes"]) == {"flux_style": file_hashes(flux.lora)["a1111_short"]}
    assert np.abs(pixels(image_of(out["images"][0])) - pixels(image_of(plain["images"][0]))).max() > 20


def test_replicate_inputs_on_flux(flux: Flux) -> None:
    def predict(**inputs: Any) -> dict[str, Any]:
        body = {"input": {"prompt": "a fox", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 5, **inputs}}
        response = requests.post(f"{flux.url}/predictions", json=body, headers={"Prefer": "wait"}, timeout=120)
        assert response.status_code == 201, response.text
        pred = response.json()
        assert pred["status"] == "succeeded", pred["logs"]
        return pred

    # no scheduler: the model's first sampler; `guidance` is the distilled guidance, true CFG stays off
    pred = predict(guidance=2.5)
    line = parse_infotext(image_of(pred["output"][0]).info["parameters"])
    assert (line["Sampler"], line["Schedule type"], line["CFG scale"], line["Distilled CFG Scale"]) == \
        ("Euler", "Simple", "1", "2.5")
    # diffusers' FluxPipeline and Replicate's Flux LoRA models call it guidance_scale: the same image
    same = predict(guidance_scale=2.5)
    assert np.array_equal(pixels(image_of(same["output"][0])), pixels(image_of(pred["output"][0])))
    dpm = parse_infotext(image_of(predict(scheduler="DPMSolverMultistep")["output"][0]).info["parameters"])
    assert (dpm["Sampler"], dpm["Schedule type"]) == ("DPM++ 2M", "Simple")
    bad = requests.post(f"{flux.url}/predictions", json={"input": {"prompt": "x", "scheduler": "K_EULER_ANCESTRAL"}},
                        headers={"Prefer": "wait"}, timeout=60)
    assert bad.status_code == 422 and "K_EULER" in bad.json()["detail"][0]["ctx"]["choices"]


def test_hires_on_flux_offers_only_image_upscalers_and_gives_the_engines_image(flux: Flux) -> None:
    from loraprompt.ui.hires import HiresOptions

    assert requests.get(f"{flux.url}/sdapi/v1/latent-upscale-modes", timeout=10).json() == []
    assert [u["name"] for u in requests.get(f"{flux.url}/sdapi/v1/upscalers", timeout=10).json()] == ["Lanczos", "Nearest"]
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "sampler_name": "Euler"}
    refused = requests.post(f"{flux.url}/sdapi/v1/txt2img", json={"prompt": "a cat", **TINY, **hires}, timeout=60)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "hr_upscaler"]  # None: Latent
    response = requests.post(f"{flux.url}/sdapi/v1/txt2img", timeout=120,
                             json={"prompt": "a cat", **TINY, **hires, "hr_upscaler": "Lanczos"})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (96, 96)
    alone = flux.engine.generate(Txt2ImgRequest("a cat", "", 2, 7, 5, 64, 64, "Euler Simple", hires=HiresOptions(
        "Lanczos", 1.5, denoising_strength=0.5)), save=False)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(alone.image.convert("RGB")))
