"""`loraprompt serve --ray`'s application on a real local Ray (2 CPUs, 2 model replicas of the
demo model): a LoRA set's second request lands on the replica that already has it (Ray Serve's
multiplexed routing), a batch's sets fan out, and every image equals the single-process server's.
Costs about 70 s on a 2-core machine (Ray start, two model loads, shutdown): deselect with -m 'not ray'."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.serve.conftest import SMALL, Served, free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The application's URL and its outputs folder."""
    from loraprompt.serve.cli import ServeConfig
    from loraprompt.serve.ray_app import build_application

    root = tmp_path_factory.mktemp("ray")
    config = ServeConfig(data_dir=str(root), outputs=str(root / "outputs"))
    env = {"OMP_NUM_THREADS": "1", "LORAPROMPT_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(config, replicas=2, cpus_per_replica=0.5, sets_per_replica=2, env=env),
                  name="loraprompt", route_prefix="/")
        yield f"http://127.0.0.1:{port}", root / "outputs"
    finally:
        serve.shutdown()
        ray.shutdown()


def txt2img(url: str, prompt: Any, seed: int, **body: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    response = requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": prompt, "seed": seed, **SMALL, **body}, timeout=120)
    assert response.status_code == 200, response.text
    data = response.json()
    return ([np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB"), dtype=np.int16) for i in data["images"]],
            json.loads(data["info"]))


def replica_log(url: str, lora: str) -> tuple[str, str]:
    """(replica, 'loaded' or 'already loaded') of a prediction with one LoRA."""
    pred = requests.post(f"{url}/predictions", headers={"Prefer": "wait"}, timeout=120, json={"input": {
        "prompt": "a <1>", "lora_urls": lora, "seed": 1, "num_inference_steps": 2, "width": 64, "height": 64}}).json()
    assert pred["status"] == "succeeded", pred["logs"]
    found = re.search(r"replica (\w+): LoRA set '.*' (already loaded|loaded)$", pred["logs"], re.M)
    assert found, pred["logs"]
    return found.group(1), found.group(2)


def test_ray_serve_multiplexes_lora_sets_and_matches_the_single_process_server(ray_app: tuple[str, Path],
                                                                              served: Served) -> None:
    ray_url, outputs = ray_app
    # affinity: the second request for a set goes where the set already is
    warm_1, how_1 = replica_log(ray_url, "demo_warm")
    sketch_1, _ = replica_log(ray_url, "demo_sketch")
    warm_2, how_2 = replica_log(ray_url, "demo_warm")
    sketch_2, how_3 = replica_log(ray_url, "demo_sketch")
    assert (how_1, warm_2, how_2) == ("loaded", warm_1, "already loaded")
    assert (sketch_2, how_3) == (sketch_1, "already loaded")

    # the same images as one process makes, also for a batch whose sets fan out to the replicas
    prompts = ["a cat <lora:demo_warm:0.7>", "a cat <lora:demo_sketch:0.5>", "a cat", "a cat <lora:demo_warm:0.7>"]
    images, info = txt2img(ray_url, prompts, 50, batch_size=4, sampler_name="Euler")
    local, local_info = txt2img(served.url, prompts, 50, batch_size=4, sampler_name="Euler")
    assert info["all_seeds"] == local_info["all_seeds"] == [50, 51, 52, 53]
    assert info["infotexts"] == local_info["infotexts"]
    for got, want in zip(images, local):
        assert got.std() > 1.0 and np.array_equal(got, want)
    assert info["replicas"][0] == info["replicas"][3]  # one set, one replica
    assert not list(outputs.glob("**/*.png"))  # A1111's API saves only with save_images

    # save_images reaches the replicas: each image written once, with its infotext (it was dropped)
    images, info = txt2img(ray_url, prompts[:2], 70, batch_size=2, sampler_name="Euler", save_images=True)
    saved = sorted(outputs.glob("txt2img-images/*/*.png"))
    assert sorted(Image.open(p).text["parameters"] for p in saved) == sorted(info["infotexts"])
    assert len(set(info["replicas"])) >= 1 and None not in info["replicas"]
    assert requests.get(f"{ray_url}/sdapi/v1/loras", timeout=10).json()[0]["name"] == "demo_sketch"

    # hires fix on the replicas: the single-process server's images, at the hires size
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "hr_second_pass_steps": 2,
             "sampler_name": "Euler"}
    images, info = txt2img(ray_url, prompts[:2], 60, batch_size=2, **hires)
    local, local_info = txt2img(served.url, prompts[:2], 60, batch_size=2, **hires)
    assert info["infotexts"] == local_info["infotexts"] and "Hires upscale: 1.5" in info["infotexts"][0]
    for got, want in zip(images, local):
        assert got.shape == (96, 96, 3) and np.array_equal(got, want)
