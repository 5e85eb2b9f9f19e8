"""Replicate-style predictions end to end: `<1>` becomes the LoRA's trigger, `lora_urls` /
`lora_scales` (names, paths under the folders, file://, http:// from a local server), the Flux
fine-tune inputs, `Prefer: wait` and polling, cancel; refused paths (403), downloads over the cap
(413), unreachable URLs (failed, reason in logs); a cancelled or failed request restores the model."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library import Library
from loraprompt.library.hashes import file_hashes
from loraprompt.serve.errors import ServeError
from loraprompt.serve.loras import LoraSources, PinnedLibrary
from loraprompt.serve.predictions import aspect_size
from tests.serve.conftest import SMALL, Served, free_port

TINY = {"num_inference_steps": 3, "width": 64, "height": 64}


def predict(served: Served, inputs: dict[str, Any], *, wait: bool = True, **extra: Any) -> requests.Response:
    headers = {"Prefer": "wait"} if wait else {}
    return requests.post(f"{served.url}/predictions", json={"input": inputs, **extra}, headers=headers, timeout=120)


def decode(uri: str) -> Image.Image:
    head, _, data = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def sdapi_image(served: Served, prompt: str, seed: int, sampler: str = "Euler a") -> Image.Image:
    body = {"prompt": prompt, "seed": seed, "sampler_name": sampler, **SMALL}
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))


def test_trigger_placeholder_and_local_lora_urls_end_to_end(served: Served) -> None:
    response = predict(served, {"prompt": "portrait of <1> with <2>", "lora_urls": "demo_sketch|styles/demo_neon.safetensors",
                                "lora_scales": "0.6|0.3", "seed": 21, "guidance_scale": 7, "scheduler": "K_EULER", **TINY})
    assert response.status_code == 201
    pred = response.json()
    assert pred["status"] == "succeeded", pred["logs"]
    assert set(pred) >= {"id", "status", "output", "logs", "metrics", "error"}
    assert pred["metrics"]["predict_time"] > 0 and pred["metrics"]["image_count"] == 1
    # <1>, <2> are the LoRAs' activation texts (their A1111 sidecars), then the tags at their scales
    assert "prompt: portrait of sketch style with neon glow <lora:demo_sketch:0.6> <lora:demo_neon:0.3>" in pred["logs"]
    image = decode(pred["output"][0])
    fields = parse_infotext(image.info["parameters"])
    assert set(parse_lora_hashes(fields["Lora hashes"])) == {"demo_sketch", "demo_neon"}
    # exactly what A1111's API gives for the prompt it stands for
    same = sdapi_image(served, "portrait of sketch style with neon glow <lora:demo_sketch:0.6> <lora:demo_neon:0.3>", 21,
                       "Euler")
    assert np.array_equal(pixels(image), pixels(same))
    assert pixels(image).std() > 1.0


def test_async_prediction_is_polled_to_success(served: Served) -> None:
    response = predict(served, {"prompt": "a hill <1>", "lora_urls": "file://" + str(served.lora_dir / "demo_warm.safetensors"),
                                "num_outputs": 2, "seed": 5, **TINY}, wait=False)
    assert response.status_code == 201
    pred = response.json()
    assert pred["status"] in ("starting", "processing", "succeeded")
    deadline = time.monotonic() + 120
    while pred["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        pred = requests.get(f"{served.url}{pred['urls']['get']}", timeout=10).json()
    assert pred["status"] == "succeeded" and len(pred["output"]) == 2
    seeds = [parse_infotext(decode(uri).info["parameters"])["Seed"] for uri in pred["output"]]
    assert seeds == ["5", "6"]
    assert requests.get(f"{served.url}/predictions/nope", timeout=10).status_code == 404
    again = requests.post(f"{served.url}/predictions", json={"id": pred["id"], "input": {"prompt": "x", **TINY}}, timeout=10)
    assert again.status_code == 409 and again.json()["detail"][0]["loc"] == ["body", "id"]


def test_flux_style_inputs(served: Served) -> None:
    response = predict(served, {"prompt": "a city", "lora_weights": "someone/demo_warm", "lora_scale": 0.9,
                                "extra_lora": "demo_neon", "extra_lora_scale": -0.5, "aspect_ratio": "16:9",
                                "output_format": "jpg", "output_quality": 70, "num_inference_steps": 2,
                                "go_fast": True, "seed": 3})
    pred = response.json()
    assert pred["status"] == "succeeded", pred["logs"]
    assert pred["output"][0].startswith("data:image/jpeg;base64,")
    image = decode(pred["output"][0])
    assert image.format == "JPEG" and image.size == aspect_size("16:9", 256) == (344, 192)
    assert "<lora:demo_warm:0.9> <lora:demo_neon:-0.5>" in pred["logs"]
    assert "'go_fast' does not apply here" in pred["logs"]
    webp = predict(served, {"prompt": "a city", "output_format": "webp", **TINY}).json()
    assert decode(webp["output"][0]).format == "WEBP"


@pytest.mark.parametrize(("inputs", "loc"), [
    ({"extra_lora_scale": 2.5}, ["body", "input", "extra_lora_scale"]),
    ({"lora_scale": -2}, ["body", "input", "lora_scale"]),
    ({"aspect_ratio": "2:1"}, ["body", "input", "aspect_ratio"]),
    ({"num_inference_steps": "many"}, ["body", "input", "num_inference_steps"]),
    ({"num_inference_steps": 500}, ["body", "input", "num_inference_steps"]),
    ({"num_outputs": 9}, ["body", "input", "num_outputs"]),
    ({"output_format": "gif"}, ["body", "input", "output_format"]),
    ({"lora_urls": "demo_warm|demo_sketch", "lora_scales": "1|2|3"}, ["body", "input", "lora_scales"]),
    ({"lora_urls": "demo_warm", "lora_scales": "nan"}, ["body", "input", "lora_scales"]),  # was queued, then failed
    ({"lora_urls": "demo_warm", "lora_scales": "inf"}, ["body", "input", "lora_scales"]),
    ({"lora_urls": "demo_warm", "lora_scales": "1e400"}, ["body", "input", "lora_scales"]),
    ({"lora_urls": "demo_warm|demo_sketch", "lora_scales": "0.5|4"}, ["body", "input", "lora_scales"]),
    ({"lora_urls": "demo_warm", "lora_scales": [-1.5]}, ["body", "input", "lora_scales"]),
    ({"prompt": "a <3>", "lora_urls": "demo_warm"}, ["body", "input", "prompt"]),
    ({"scheduler": "PNDM"}, ["body", "input", "scheduler"]),
])
def test_bad_inputs_are_422_naming_the_field(served: Served, inputs: dict[str, Any], loc: list[str]) -> None:
    response = predict(served, {"prompt": "x", **TINY, **inputs})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    if "scheduler" in inputs:
        assert "K_EULER_ANCESTRAL" in response.json()["detail"][0]["msg"]


def test_prediction_without_input_is_422(served: Served) -> None:
    response = requests.post(f"{served.url}/predictions", json={"prompt": "x"}, timeout=10)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "input"]


@pytest.mark.parametrize("ref", ["/etc/hostname", "../../outside.safetensors", "file:///etc/hostname"])
def test_paths_outside_the_lora_folders_are_403(served: Served, ref: str, tmp_path: Path) -> None:
    outside = served.root / "outside.safetensors"
    outside.write_bytes((served.lora_dir / "demo_warm.safetensors").read_bytes())
    response = predict(served, {"prompt": "x", "lora_urls": ref, **TINY})
    assert response.status_code == 403, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "input", "lora_urls"]


def test_unknown_local_lora_is_404(served: Served) -> None:
    response = predict(served, {"prompt": "x", "lora_weights": "owner/not_here", **TINY})
    assert response.status_code == 404 and "not_here" in response.json()["detail"][0]["msg"]


def test_a_lora_reference_that_is_not_a_str_is_refused_by_name(tmp_path: Path) -> None:
    """LoraSources.resolve(None, ...) and PinnedLibrary.resolve(None) raised AttributeError
    ('NoneType' object has no attribute 'strip'), from the library for the latter."""
    (tmp_path / "Lora").mkdir()
    pinned = PinnedLibrary(Library([tmp_path / "Lora"], persist=False), tmp_path / "downloads")
    with pytest.raises(TypeError, match="ref must be a str, not NoneType"):
        LoraSources(pinned).resolve(None, "lora_weights")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str, not NoneType"):
        pinned.resolve(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str, not list"):  # was "unhashable type" from the pins
        pinned.resolve(["x"])  # type: ignore[arg-type]
    with pytest.raises(ServeError, match="LoRA 'absent' not found"):
        LoraSources(pinned).resolve("absent", "lora_weights")  # valid calls unchanged


def test_an_absolute_path_or_file_url_may_leave_out_the_extension(tmp_path: Path) -> None:
    """The docs say a path under the folders works "absolute or relative, with or without the
    extension"; an absolute path or file:// URL without it was a 404 ('no such LoRA file')."""
    lora_dir = tmp_path / "Lora"
    (lora_dir / "styles").mkdir(parents=True)
    (lora_dir / "styles" / "ink.safetensors").write_bytes(b"")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    sources = LoraSources(PinnedLibrary(Library([lora_dir], persist=False), tmp_path / "downloads"))
    want = str(lora_dir / "styles" / "ink.safetensors")
    for ref in (str(lora_dir / "styles" / "ink"), (lora_dir / "styles" / "ink").as_uri(), "styles/ink", want):
        assert sources.resolve(ref, "lora_urls") == want, ref
    with pytest.raises(ServeError) as outside:  # still refused outside the folders, extension or not
        sources.resolve(str(tmp_path / "outside"), "lora_urls")
    assert outside.value.status == 403
    with pytest.raises(ServeError) as absent:
        sources.resolve(str(lora_dir / "absent"), "lora_urls")
    assert absent.value.status == 404


class Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}
    lie_about_length = False

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        if not self.lie_about_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_files() -> Iterator[tuple[str, type[Files]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Files.files, Files.hits, Files.lie_about_length = {}, {}, False
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Files
    finally:
        server.shutdown()
        server.server_close()


def test_http_lora_is_downloaded_once_and_applied_exactly(served: Served, http_files: tuple[str, type[Files]]) -> None:
    base, handler = http_files
    # a different file named like a library LoRA: the download must be used, not the local namesake
    data = (served.lora_dir / "demo_sketch.safetensors").read_bytes()
    handler.files["/models/demo_warm.safetensors"] = data
    url = base + "/models/demo_warm.safetensors"
    first = predict(served, {"prompt": "a <1>", "lora_urls": url, "seed": 8, **TINY}).json()
    second = predict(served, {"prompt": "a <1>", "lora_urls": url, "seed": 8, **TINY}).json()

    assert first["status"] == second["status"] == "succeeded", first["logs"]
    assert handler.hits == {"/models/demo_warm.safetensors": 1}  # the second came from the cache
    cached = served.root / "downloads" / (hashlib.sha256(data).hexdigest() + ".safetensors")
    assert cached.read_bytes() == data
    hashes = parse_lora_hashes(parse_infotext(decode(first["output"][0]).info["parameters"])["Lora hashes"])
    assert list(hashes.values()) == [file_hashes(served.lora_dir / "demo_sketch.safetensors")["a1111_short"]]
    assert np.array_equal(pixels(decode(first["output"][0])), pixels(decode(second["output"][0])))
    assert "demo_warm" not in {lora["name"] for lora in requests.get(f"{served.url}/sdapi/v1/loras", timeout=10).json()
                               if "downloads" in lora["path"]}


@pytest.mark.parametrize("lie", [False, True])
def test_download_over_the_cap_is_413(served: Served, http_files: tuple[str, type[Files]], lie: bool) -> None:
    base, handler = http_files
    handler.lie_about_length = lie  # no Content-Length: the cap is enforced while reading
    handler.files["/big.safetensors"] = b"\0" * (served.service.sources.max_download_bytes + 1)
    response = predict(served, {"prompt": "x", "lora_urls": base + "/big.safetensors", **TINY})
    assert response.status_code == 413, response.text
    assert "download cap" in response.json()["detail"][0]["msg"]
    assert not list((served.root / "downloads").glob("*.part"))


def test_unreachable_url_fails_the_prediction_with_the_reason_in_logs(served: Served,
                                                                      http_files: tuple[str, type[Files]]) -> None:
    base, _ = http_files
    dead = f"http://127.0.0.1:{free_port()}/gone.safetensors"
    for url, reason in ((dead, "Connection refused"), (base + "/missing.safetensors", "404")):
        pred = predict(served, {"prompt": "x", "lora_urls": url, **TINY}).json()
        assert pred["status"] == "failed" and pred["output"] is None
        assert url in pred["error"] and reason in pred["logs"]
        assert requests.get(f"{served.url}/predictions/{pred['id']}", timeout=10).json()["status"] == "failed"


def test_a_lora_that_cannot_apply_fails_the_prediction(served: Served) -> None:
    broken = served.lora_dir / "broken.safetensors"
    broken.write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    try:
        pred = predict(served, {"prompt": "x", "lora_urls": "broken.safetensors", **TINY}).json()
    finally:
        broken.unlink()
    assert pred["status"] == "failed" and "broken" in pred["error"]


def test_cancel_stops_a_running_prediction_and_restores_the_model(served: Served) -> None:
    pred = predict(served, {"prompt": "a <1>", "lora_urls": "demo_sketch", "num_inference_steps": 60, "width": 128,
                            "height": 128, "num_outputs": 4}, wait=False).json()
    deadline = time.monotonic() + 60
    while requests.get(f"{served.url}/predictions/{pred['id']}", timeout=10).json()["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # inside sampling, the LoRA applied
    canceled = requests.post(f"{served.url}/predictions/{pred['id']}/cancel", timeout=60).json()
    assert canceled["status"] == "canceled" and canceled["output"] is None
    assert served.is_pristine()  # no LoRA left behind


def test_a_failure_inside_generation_fails_the_prediction_and_restores_the_model(served: Served) -> None:
    unet = served.engine.model.pipe.unet
    calls = [0]

    def explode(_module: Any, _args: Any) -> None:  # a real exception from inside the UNet's forward
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("out of memory (test)")

    hook = unet.register_forward_pre_hook(explode)
    try:
        pred = predict(served, {"prompt": "a <1>", "lora_urls": "demo_neon", **TINY}).json()
    finally:
        hook.remove()
    assert pred["status"] == "failed" and "out of memory (test)" in pred["error"]
    assert "out of memory (test)" in pred["logs"]
    assert served.is_pristine()
    again = predict(served, {"prompt": "a <1>", "lora_urls": "demo_neon", **TINY}).json()
    assert again["status"] == "succeeded"  # the server goes on


def test_a_webhook_is_named_in_the_logs_as_not_sent(served: Served) -> None:
    """Replicate's `webhook` is a top-level field; this server sends none, and says so, so a client
    waiting for the call learns why it never comes."""
    response = predict(served, {"prompt": "a cat", **TINY}, webhook="http://127.0.0.1:9/hook",
                       webhook_events_filter=["completed"], version="abc")
    assert response.status_code == 201 and response.json()["status"] == "succeeded"
    warnings = [line for line in response.json()["logs"].splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("no webhooks" in w for w in warnings), warnings
