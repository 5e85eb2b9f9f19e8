"""A prediction's life through real requests: input that cannot be answered as JSON is refused
before anything is made; a prediction cancelled while it waits for the model ends at once; a
failed job's restore waits for a generation running beside it."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import requests

from tests.serve.conftest import Served

TINY = {"num_inference_steps": 2, "width": 64, "height": 64}


@pytest.mark.parametrize(("extra", "key"), [('"go_fast": NaN', "go_fast"), ('"megapixels": -Infinity', "megapixels"),
                                            ('"deep": {"x": [1, Infinity]}', "deep")])
def test_a_non_finite_extra_input_is_422_before_anything_is_made(served: Served, extra: str, key: str) -> None:
    """Python's json reads NaN: an unused extra input kept it, the prediction was made and ran, and
    the answer (which echoes the input) was a 500 while GET then said succeeded."""
    pid = "poison-" + uuid.uuid4().hex[:8]
    body = '{"prompt": "a cat", "num_inference_steps": 2, "width": 64, "height": 64, ' + extra + "}"
    raw = f'{{"input": {body}, "id": "{pid}"}}'
    response = requests.post(f"{served.url}/predictions", data=raw.encode(),
                             headers={"Content-Type": "application/json", "Prefer": "wait"}, timeout=120)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "input", key]
    assert requests.get(f"{served.url}/predictions/{pid}", timeout=10).status_code == 404  # nothing was made
    listed = requests.get(f"{served.url}/predictions", timeout=10)
    assert listed.status_code == 200 and pid not in {p["id"] for p in listed.json()["results"]}


def test_cancelling_a_queued_prediction_ends_it_canceled_at_once_and_it_never_runs(served: Served) -> None:
    """ModelQueue.cancel only flagged a waiting job, and the cancel route waited up to 30 s for it
    (behind the running job) and answered `starting`. Replicate answers `canceled` at once."""
    unet = served.engine.model.pipe.unet
    entered, gate = threading.Event(), threading.Event()

    def hold(_module: Any, _args: Any) -> None:  # the running job stays inside sampling until released
        entered.set()
        gate.wait(120)

    hook = unet.register_forward_pre_hook(hold)
    blocker: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: blocker.update(r=requests.post(
        f"{served.url}/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64}, timeout=180)))
    try:
        thread.start()
        assert entered.wait(60)
        queued = requests.post(f"{served.url}/predictions", json={"input": {"prompt": "a dog", **TINY}}, timeout=30).json()
        assert queued["status"] == "starting" and served.service.backend.pending == 1
        canceled = requests.post(f"{served.url}/predictions/{queued['id']}/cancel", timeout=60).json()
        assert canceled["status"] == "canceled" and canceled["output"] is None
        assert served.service.backend.pending == 0  # it left the queue
    finally:
        hook.remove()
        gate.set()
        thread.join(180)
    assert blocker["r"].status_code == 200  # the running job was not disturbed
    later = requests.post(f"{served.url}/predictions", json={"input": {"prompt": "a bird", **TINY}},
                          headers={"Prefer": "wait"}, timeout=120).json()
    assert later["status"] == "succeeded"  # the worker went on past the canceled job
    again = requests.get(f"{served.url}/predictions/{queued['id']}", timeout=10).json()
    assert again["status"] == "canceled" and again["started_at"] is None  # skipped, never run


def test_a_failed_jobs_restore_waits_for_the_generation_running_beside_it(served: Served) -> None:
    """A failed or stopped API job puts the original weights back (jobs.restore_model). It did so
    without the engine's generation lock, so a web-page generation running in another thread on
    the same engine had its LoRAs taken off in the middle of sampling. It now waits for it."""
    from loraprompt.serve.jobs import restore_model
    from loraprompt.ui.txt2img import Txt2ImgRequest

    engine = served.engine
    engine.generate(Txt2ImgRequest("a cat <lora:demo_sketch:1>", steps=2, width=64, height=64, seed=1))
    assert not served.is_pristine()  # LoRAs stay patched until a prompt drops them
    with engine._lock:  # a generation is running in another thread
        restorer = threading.Thread(target=restore_model, args=(engine,), daemon=True)
        restorer.start()
        restorer.join(2.0)
        assert restorer.is_alive() and not served.is_pristine()  # it waits, the weights untouched
    restorer.join(60)
    assert not restorer.is_alive() and served.is_pristine()
