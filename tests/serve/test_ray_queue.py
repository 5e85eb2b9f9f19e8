"""`--max-queue` in Ray mode, through real requests to the real FastAPI app on a `Service` whose
backend is `RayBackend`. The replicas are a thin fake of Ray Serve's DeploymentHandle API
(`.options(multiplexed_model_id=...)`, `.generate.remote(tasks, job_id)` returning a response with
`.result()` and `.cancel()`) whose calls finish when the test says: what is under test is the
ingress's queue accounting, and a real Ray cluster (test_ray.py) costs about 70 s to start."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.serve.conftest import ServerThread

pytest.importorskip("ray.serve")


class FakeResponse:
    def __init__(self, gate: threading.Event, count: int) -> None:
        self.gate, self.count = gate, count

    def result(self) -> dict[str, Any]:
        assert self.gate.wait(120)
        return {"outputs": [None] * self.count, "status": "succeeded", "error": None, "logs": [], "warnings": []}

    def cancel(self) -> None:
        pass


class FakeHandle:
    """What RayBackend uses of a DeploymentHandle to the model replicas."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.generate = self

    def options(self, **_kw: Any) -> FakeHandle:
        return self

    def remote(self, tasks: list[Any], _job_id: str, _keep: bool = False, _keep_incomplete: bool | None = None) -> FakeResponse:
        # ModelReplica.generate's parameters
        self.calls += 1
        return FakeResponse(self.gate, len(tasks))


@pytest.fixture(params=[1, 2], ids=["1-replica", "2-replicas"])
def ray_ingress(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FakeHandle, int]]:
    from loraprompt.library import Library
    from loraprompt.serve.app import build_app
    from loraprompt.serve.ray_app import RayBackend
    from loraprompt.serve.service import Limits, ModelInfo, Service

    (tmp_path / "Lora").mkdir()
    handle = FakeHandle()
    service = Service(model=ModelInfo("loraprompt-demo", "sd1", is_demo=True),
                      library=Library([str(tmp_path / "Lora")], persist=False),
                      backend=RayBackend(handle, replicas=request.param), download_dir=tmp_path / "downloads",
                      limits=Limits(max_queue=2))
    server = ServerThread(build_app(service))
    try:
        yield server.url, handle, request.param
    finally:
        handle.gate.set()
        server.stop()


def test_max_queue_holds_in_ray_mode(ray_ingress: tuple[str, FakeHandle, int]) -> None:
    """RayBackend.pending counted `queued` jobs, but a job starts (its calls go to Ray) at once, so
    pending was always 0 and no request was ever answered 503."""
    url, handle, replicas = ray_ingress

    def predict() -> requests.Response:
        return requests.post(f"{url}/predictions", json={"input": {"prompt": "a cat", "num_inference_steps": 2,
                                                                   "width": 64, "height": 64}}, timeout=30)

    accepted = [predict() for _ in range(replicas + 2)]  # one running per replica, then --max-queue 2 waiting
    assert [r.status_code for r in accepted] == [201] * (replicas + 2)
    assert requests.get(f"{url}/health-check", timeout=10).json()["queued"] == 2
    full = predict()
    assert full.status_code == 503, full.text
    assert "--max-queue 2" in full.json()["detail"][0]["msg"]
    assert handle.calls == replicas + 2  # the refused one never reached the replicas

    handle.gate.set()  # the replicas finish: room again
    deadline = time.monotonic() + 60
    for response in accepted:
        while requests.get(f"{url}/predictions/{response.json()['id']}", timeout=10).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert requests.get(f"{url}/health-check", timeout=10).json()["queued"] == 0
    assert predict().status_code == 201


def test_jobs_waiting_behind_the_replicas_show_starting(ray_ingress: tuple[str, FakeHandle, int]) -> None:
    """Every Ray job was `running` from its submission, so a prediction waiting behind the busy
    replicas said `processing` (and got a `started_at`) while /health-check counted it queued. The
    oldest job per replica is processing, the others starting, and they move up as jobs end."""
    url, handle, replicas = ray_ingress
    body = {"input": {"prompt": "a cat", "num_inference_steps": 2, "width": 64, "height": 64}}
    ids = [requests.post(f"{url}/predictions", json=body, timeout=30).json()["id"] for _ in range(replicas + 2)]

    def states() -> list[tuple[str, bool]]:
        got = [requests.get(f"{url}/predictions/{i}", timeout=10).json() for i in ids]
        return [(p["status"], p["started_at"] is not None) for p in got]

    assert states() == [("processing", True)] * replicas + [("starting", False)] * 2
    assert handle.calls == replicas + 2  # the waiting ones are already queued at Ray
    handle.gate.set()
    deadline = time.monotonic() + 60
    while states() != [("succeeded", True)] * (replicas + 2):
        assert time.monotonic() < deadline, states()
        time.sleep(0.05)
