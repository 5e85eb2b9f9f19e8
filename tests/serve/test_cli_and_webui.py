"""`loraprompt serve` as a real process driven by webuiapi (with --api-auth), and the same routes
mounted inside `loraprompt webui` beside the gradio page."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
import webuiapi
from fastapi.testclient import TestClient

from loraprompt.cli import main
from loraprompt.infotext import parse_infotext, parse_lora_hashes
from tests.serve.conftest import SMALL, Served, free_port

REPO = Path(__file__).resolve().parents[2]


def test_serve_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--lora-dir", "--host", "--port", "--api-auth", "--cors-allow-origins", "--max-steps",
                   "--max-download-mb", "--ray", "--replicas"):
        assert option in out


def test_bad_api_auth_is_refused_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--api-auth", "justaname"]) == 2
    assert "user:password" in capsys.readouterr().err


@pytest.mark.slow
def test_loraprompt_serve_process_with_api_auth(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "loraprompt", "serve", "--port", str(port), "--data-dir", str(tmp_path),
                             "--api-auth", "me:pw"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            try:
                if requests.get(f"http://127.0.0.1:{port}/health-check", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert requests.get(f"http://127.0.0.1:{port}/sdapi/v1/loras", timeout=10).status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="me", password="pw", steps=2)
        assert {lora["name"] for lora in api.get_loras()} == {"demo_warm", "demo_sketch", "demo_neon"}
        result = api.txt2img(prompt="a cat <lora:demo_neon:0.3>", seed=4, width=64, height=64)
        hashes = parse_lora_hashes(parse_infotext(result.info["infotexts"][0])["Lora hashes"])
        assert list(hashes) == ["demo_neon"] and len(hashes["demo_neon"]) == 12
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()


def test_webui_mounts_the_api_beside_the_page(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from loraprompt.ui import webui

    captured: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))  # keep the app, don't block
    webui.serve(served.engine, "127.0.0.1", free_port(), [str(served.root / "outputs")])
    app = captured["app"]
    service = app.state.loraprompt_service
    try:
        client = TestClient(app)
        assert client.get("/").status_code == 200  # the gradio page is still there
        assert {lora["name"] for lora in client.get("/sdapi/v1/loras").json()} >= {"demo_warm"}
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:demo_warm:0.5>", **SMALL, "seed": 2})
        assert response.status_code == 200 and "Lora hashes" in response.json()["info"]
        pred = client.post("/predictions", json={"input": {"prompt": "<1>", "lora_urls": "demo_warm", "num_inference_steps": 2,
                                                           "width": 64, "height": 64}}, headers={"Prefer": "wait"}).json()
        assert pred["status"] == "succeeded"
        # a page on another site cannot interrupt the UI's generations through the mounted API
        evil = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
        assert client.post("/sdapi/v1/interrupt", headers=evil).status_code == 403
        assert client.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert service.engine is served.engine  # the UI's own engine: one model, one lock
    finally:
        service.close()
