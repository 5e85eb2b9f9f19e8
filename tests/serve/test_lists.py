"""The A1111 routes clients call at start-up, through `webuiapi` against a started server: every
upscaler listed runs a hires fix (and nothing unlisted is claimed), the empty lists of what this
server has none of, cmd-flags without secrets, memory in A1111's shape, and skip ending the current
image of a batch while the rest are made as if alone, and A1111's "Save incomplete images" setting."""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
from typing import Any

import numpy as np
import requests
import torch
import webuiapi
from PIL import Image

from loraprompt.ui.txt2img import Txt2ImgRequest
from tests.serve.conftest import Served


def client(served: Served, **kw: Any) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=served.port, **kw)


def test_every_listed_upscaler_runs_the_hires_fix(served: Served) -> None:
    api = client(served)
    upscalers, latent = api.get_upscalers(), api.get_latent_upscale_modes()
    assert upscalers == [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                         for n in ("Lanczos", "Nearest")]
    assert [m["name"] for m in latent] == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                           "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]
    for name in [u["name"] for u in upscalers] + [m["name"] for m in latent]:
        response = requests.post(f"{served.url}/sdapi/v1/txt2img", timeout=120, json={
            "prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.25,
            "hr_upscaler": name})
        assert response.status_code == 200, (name, response.text)
        image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
        assert image.size == (80, 80) and f"Hires upscaler: {name}," in image.info["parameters"]


def test_what_this_server_has_none_of_is_an_empty_list_in_a1111s_shape(served: Served) -> None:
    api = client(served)
    assert api.get_sd_vae() == []  # A1111 with no VAE files; the model's own VAE is not listed
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_prompt_styles() == []
    assert api.get_scripts() == {"txt2img": [], "img2img": []}


def test_cmd_flags_say_what_holds_here_and_never_the_api_password(served: Served) -> None:
    flags = client(served).get_cmd_flags()
    assert flags["api"] is True and flags["lora_dir"] == str(served.lora_dir)

    from loraprompt.serve.cli import ServeConfig, add_arguments, cmd_flags, config_of

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--host", "0.0.0.0", "--port", "7861", "--api-auth", "me:s3cret"])
    got = cmd_flags(args, ServeConfig(lora_dirs=["/loras"], data_dir="/data"))
    assert (got["listen"], got["port"], got["nowebui"], got["lora_dir"], got["data_dir"]) == (True, 7861, True, "/loras",
                                                                                              "/data")
    assert config_of(args).save_incomplete is False  # A1111's default: what an interrupt cut short is not saved
    assert config_of(parser.parse_args(["--save-incomplete-images"])).save_incomplete is True
    for host, listen in (("127.0.0.2", False), ("[::1]", False), ("localhost", False), ("myhost.lan", True)):
        assert cmd_flags(parser.parse_args(["--host", host]), ServeConfig())["listen"] is listen, host
    served.service.cmd_flags = {**got, "api_auth": "me:s3cret"}
    try:
        assert "s3cret" not in json.dumps(client(served).get_cmd_flags())
    finally:
        served.service.cmd_flags = {}


def test_memory_is_a1111s_shape(served: Served) -> None:
    memory = client(served).get_memory()
    ram = memory["ram"]
    assert 0 < ram["used"] < ram["total"] and ram["free"] == ram["total"] - ram["used"]
    if torch.cuda.is_available():
        assert memory["cuda"]["system"]["total"] > 0
    else:
        assert memory["cuda"] == {"error": "unavailable"}  # A1111's answer without CUDA


def test_skip_ends_the_current_image_and_the_batch_goes_on(served: Served) -> None:
    api = client(served, sampler="Euler", steps=40)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(r=api.txt2img(prompt="a cat", seed=70, batch_size=3,
                                                                          width=64, height=64)))
    worker.start()
    deadline = time.monotonic() + 120
    while (progress := api.get_progress())["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.02)
    assert progress["state"]["job_no"] == 0
    api.skip()
    worker.join(300)
    done = result["r"]
    assert done.info["interrupted"] is False and done.info["all_seeds"] == [70, 71, 72]
    for i, image in enumerate(done.images):
        alone = served.engine.generate(Txt2ImgRequest("a cat", "", 40, 7, 70 + i, 64, 64, "Euler"), save=False)
        same = np.array_equal(np.asarray(image.convert("RGB")), np.asarray(alone.image.convert("RGB")))
        assert same is (i > 0), i  # the first ended unfinished; the others are whole


def _skipped_batch(api: webuiapi.WebUIApi, seed: int, **body: Any) -> Any:
    """A saved batch of two whose first image a skip cuts short."""
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(r=api.txt2img(
        prompt="a cat", seed=seed, batch_size=2, width=64, height=64, save_images=True, **body)))
    worker.start()
    deadline = time.monotonic() + 120
    while api.get_progress()["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.02)
    api.skip()
    worker.join(300)
    return result["r"]


def test_save_incomplete_images_is_an_option_and_a_per_request_setting(served: Served) -> None:
    """A1111's "Save incomplete images" setting, through the API: GET/POST /sdapi/v1/options and a
    request's override_settings (only --save-incomplete-images set it before; override_settings'
    was ignored with a warning)."""
    api = client(served, sampler="Euler", steps=40)
    folder = served.engine.outputs_dir / "txt2img-images"

    def saved(seed: int) -> list[int]:
        return sorted(int(Image.open(p).text["parameters"].split("Seed: ")[1].split(",")[0])
                      for p in folder.glob("*/*.png") if f"Seed: {seed}," in Image.open(p).text["parameters"]
                      or f"Seed: {seed + 1}," in Image.open(p).text["parameters"])

    assert api.get_options()["save_incomplete_images"] is False  # A1111's default
    _skipped_batch(api, 80)
    assert saved(80) == [81]  # the skipped image is answered, not saved
    done = _skipped_batch(api, 90, override_settings={"save_incomplete_images": True})
    assert saved(90) == [90, 91] and "not supported" not in json.dumps(done.info)
    try:
        api.set_options({"save_incomplete_images": True})
        assert api.get_options()["save_incomplete_images"] is True
        assert served.engine.save_incomplete is True  # the web UI beside the API follows, as A1111's settings
        _skipped_batch(api, 100, override_settings={"save_incomplete_images": False})  # the request's wins
        assert saved(100) == [101]
        bad = requests.post(f"{served.url}/sdapi/v1/options", json={"save_incomplete_images": "yes"}, timeout=30)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "save_incomplete_images"]
        bad = requests.post(f"{served.url}/sdapi/v1/txt2img", timeout=30, json={
            "prompt": "a cat", "override_settings": {"save_incomplete_images": 1}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "override_settings", "save_incomplete_images"]
    finally:
        api.set_options({"save_incomplete_images": False})
    assert api.get_options()["save_incomplete_images"] is False and served.engine.save_incomplete is False


def test_a_null_seed_is_random_and_overrides_can_stay_set_as_in_a1111(served: Served) -> None:
    """A1111's API fields are all optional: `"seed": null` is a random seed (it was a 422). And
    `override_settings_restore_afterwards: false` keeps the overrides set for later requests, as
    POST /options would (it was ignored)."""
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": None}
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert 0 <= json.loads(response.json()["info"])["seed"] < 2**32
    api = client(served)
    try:
        kept = {**body, "override_settings": {"CLIP_stop_at_last_layers": 2, "save_incomplete_images": True},
                "override_settings_restore_afterwards": False}
        assert requests.post(f"{served.url}/sdapi/v1/txt2img", json=kept, timeout=120).status_code == 200
        options = api.get_options()
        assert (options["CLIP_stop_at_last_layers"], options["save_incomplete_images"]) == (2, True)
        later = requests.post(f"{served.url}/sdapi/v1/txt2img", json={**body, "seed": 3}, timeout=120).json()
        assert json.loads(later["info"])["clip_skip"] == 2
        restored = {**kept, "override_settings": {"CLIP_stop_at_last_layers": 1},
                    "override_settings_restore_afterwards": True}  # A1111's default: a one-off
        assert requests.post(f"{served.url}/sdapi/v1/txt2img", json=restored, timeout=120).status_code == 200
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1, "save_incomplete_images": False})
    assert served.engine.save_incomplete is False
