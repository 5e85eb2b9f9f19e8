"""Per-image LoRAs in one batch (each image identical to generating it alone with seed + i,
outputs in request order, run grouped by LoRA set), concurrent requests that never see each
other's LoRAs, the limits, auth and CORS."""

from __future__ import annotations

import base64
import io
import json
import threading
from typing import Any

import numpy as np
import pytest
import requests
import webuiapi
from fastapi.testclient import TestClient
from PIL import Image

from loraprompt.serve.app import build_app, parse_auth
from loraprompt.serve.jobs import ImageTask, grouped_order, lora_set_key
from loraprompt.serve.service import Limits, Service
from loraprompt.ui.txt2img import Txt2ImgRequest
from tests.serve.conftest import SMALL, Served, ServerThread

A = "a cat <lora:demo_warm:0.7>"
B = "a cat <lora:demo_sketch:0.5:0.8>"
C = "a cat <lora:demo_warm:0.4> <lora:demo_sketch:0.3>"
NONE = "a cat"


def txt2img(served: Served, **body: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json={**SMALL, **body}, timeout=300)
    assert response.status_code == 200, response.text
    data = response.json()
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB"), dtype=np.int16)
              for i in data["images"]]
    return images, json.loads(data["info"])


def test_lora_set_key_and_grouped_order() -> None:
    assert lora_set_key(A) == lora_set_key("a dog <lora:demo_warm:0.7>") != lora_set_key(B)
    assert lora_set_key(NONE) == ""
    tasks = [ImageTask(Txt2ImgRequest(p)) for p in (A, B, A, NONE, B, C)]
    assert grouped_order(tasks) == [0, 2, 1, 4, 3, 5]


def test_per_image_loras_equal_single_image_runs_in_request_order(served: Served) -> None:
    prompts = [A, B, NONE, A, C, B]
    batch, info = txt2img(served, prompt=prompts, seed=300, batch_size=3, n_iter=2, sampler_name="Euler")
    alone = [txt2img(served, prompt=p, seed=300 + i, sampler_name="Euler")[0][0] for i, p in enumerate(prompts)]

    assert info["all_prompts"] == prompts and info["all_seeds"] == [300 + i for i in range(6)]
    for i, (got, want) in enumerate(zip(batch, alone)):
        assert got.std() > 1.0
        assert np.array_equal(got, want), f"image {i} ({prompts[i]!r}) differs from generating it alone"
    # each image got its own set: names per image, as the prompts ask
    assert [[lora["name"] for lora in image] for image in info["loras"]] == [
        ["demo_warm"], ["demo_sketch"], [], ["demo_warm"], ["demo_warm", "demo_sketch"], ["demo_sketch"]]
    assert ["Lora hashes" in t for t in info["infotexts"]] == [True, True, False, True, True, True]
    # the same seed with different sets differs: the set really is per image
    assert not np.array_equal(batch[0], txt2img(served, prompt=B, seed=300, sampler_name="Euler")[0][0])


def test_concurrent_requests_never_see_each_others_loras(served: Served) -> None:
    cases = [(A, 11), (B, 12), (NONE, 13), (C, 14)]
    expected = {p: txt2img(served, prompt=p, seed=s)[0][0] for p, s in cases}
    results: dict[tuple[str, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def hit(prompt: str, seed: int, round_no: int) -> None:
        try:
            results[(prompt, round_no)] = txt2img(served, prompt=prompt, seed=seed)[0][0]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hit, args=(p, s, r)) for r in range(2) for p, s in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert len(results) == 8
    for (prompt, _), image in results.items():
        assert np.array_equal(image, expected[prompt]), prompt


def test_limits_are_configurable(served: Served) -> None:
    service = Service(served.engine, backend=served.service.backend, limits=Limits(max_steps=4, max_size=128, max_images=2))
    client = TestClient(build_app(service))
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "steps": 5}).json()["detail"][0]["loc"] == [
        "body", "steps"]
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "width": 136}).status_code == 422
    response = client.post("/predictions", json={"input": {"prompt": "x", "num_outputs": 3, "num_inference_steps": 2, "width": 64, "height": 64}})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "input", "num_outputs"]
    busy = TestClient(build_app(Service(served.engine, backend=served.service.backend, limits=Limits(max_queue=0))))
    response = busy.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
    assert response.status_code == 503 and "--max-queue" in response.json()["detail"][0]["msg"]


def test_api_auth_like_a1111(served: Served) -> None:
    app = build_app(served.service, api_auth="alice:s3cret,bob:pw:with:colons")
    server = ServerThread(app)
    try:
        url = f"{server.url}/sdapi/v1/sd-models"
        denied = requests.get(url, timeout=10)
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Basic"
        assert requests.get(url, auth=("alice", "wrong"), timeout=10).status_code == 401
        assert requests.post(f"{server.url}/predictions", json={"input": {"prompt": "x"}}, timeout=10).status_code == 401
        assert requests.get(url, auth=("bob", "pw:with:colons"), timeout=10).status_code == 200
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="alice", password="s3cret", steps=2)
        result = api.txt2img(prompt="a cat <lora:demo_warm:0.5>", seed=1, width=64, height=64)
        assert "Lora hashes" in result.info["infotexts"][0]
    finally:
        server.stop()
    with pytest.raises(ValueError, match="user:password"):
        parse_auth("nopassword")


def test_cors_is_off_unless_asked(served: Served) -> None:
    origin = {"Origin": "https://example.org"}
    plain = TestClient(build_app(served.service))
    assert "access-control-allow-origin" not in plain.get("/sdapi/v1/samplers", headers=origin).headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    assert plain.options("/sdapi/v1/txt2img", headers=preflight).status_code in (405, 400)
    allowed = TestClient(build_app(served.service, cors_origins=["https://example.org"]))
    assert allowed.get("/sdapi/v1/samplers", headers=origin).headers["access-control-allow-origin"] == "https://example.org"
    assert "access-control-allow-origin" not in allowed.get("/sdapi/v1/samplers", headers={"Origin": "https://evil.example"}).headers


def test_cross_site_posts_are_refused_unless_cors_allows_their_origin(served: Served) -> None:
    """A web page on another site can send a POST without a body and without a preflight
    (robustness rule 22): interrupt, skip and refresh-loras are refused when the browser marks the
    request cross-site, unless --cors-allow-origins allows that page. Clients that are not browsers
    send no Sec-Fetch-Site and are unaffected; GETs are read-only and stay as they are."""
    evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    plain = TestClient(build_app(served.service))
    for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/refresh-loras"):
        refused = plain.post(path, headers=evil)
        assert refused.status_code == 403 and "--cors-allow-origins" in refused.json()["detail"], path
        assert plain.post(path, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403, path  # no Origin
        assert plain.post(path).status_code == 200, path  # webuiapi, curl
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert plain.post(path, headers=same).status_code == 200, path
        assert plain.post(path, headers={**evil, "Sec-Fetch-Site": "same-site"}).status_code == 200, path  # another port
    assert plain.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, headers=evil).status_code == 403
    assert plain.get("/sdapi/v1/samplers", headers=evil).status_code == 200
    allowed = TestClient(build_app(served.service, cors_origins=["https://example.org"],
                                   cors_origin_regex=r"https://[a-z]+\.example\.net"))
    for origin, status in (("https://example.org", 200), ("https://app.example.net", 200), ("https://evil.example", 403),
                           ("https://example.org.evil.example", 403)):
        response = allowed.post("/sdapi/v1/interrupt", headers={"Origin": origin, "Sec-Fetch-Site": "cross-site"})
        assert response.status_code == status, origin
