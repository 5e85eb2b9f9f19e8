"""`loraprompt webui --checkpoint FOLDER --lora-dir DIR`: the real server on a non-demo model,
driven through gradio's own client (no browser): no demo notice, the model's name in the infotext."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library.hashes import file_hashes
from loraprompt.models.demo import build_demo_pipeline
from loraprompt.models.demo_loras import write_demo_loras
from tests.fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_webui_serves_a_checkpoint_folder(tmp_path: Path) -> None:
    client_mod = pytest.importorskip("gradio_client")
    pipe = build_demo_pipeline()
    pipe.save_pretrained(tmp_path / "tiny-model")
    write_demo_loras(pipe, tmp_path / "Lora")
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "loraprompt", "webui", "--checkpoint", str(tmp_path / "tiny-model"),
           "--lora-dir", str(tmp_path / "Lora"), "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300  # a loaded shared CI machine needs more than 2 minutes
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    page = r.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(0.5)
        assert "draws noise" not in page and "tiny-model" in page
        client = client_mod.Client(url, verbose=False)
        _image, _batch, infotext, saved, panel = client.predict(
            "a cat <lora:demo_neon:0.5>", "", "Euler", 3, 64, 64, 7.0, 5, 1, api_name="/run")
        fields = parse_infotext(infotext)
        assert fields["Model"] == "tiny-model" and fields["Sampler"] == "Euler"
        neon = file_hashes(tmp_path / "Lora" / "styles" / "demo_neon.safetensors")["a1111_short"]
        assert parse_lora_hashes(fields["Lora hashes"]) == {"demo_neon": neon}
        assert Path(saved).is_file() and Path(saved).is_relative_to(tmp_path / "data" / "outputs")
        assert "demo_neon" in panel
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("own_folder", [False, True])
def test_startup_message_names_the_folder_it_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], own_folder: bool) -> None:
    """The demo's LoRA folder is named only when it is the one scanned; --lora-dir is named instead."""
    import argparse

    import loraprompt.ui.webui
    from loraprompt.ui import cli

    served: list[object] = []
    monkeypatch.setattr(loraprompt.ui.webui, "serve", lambda engine, *a, **kw: served.append(engine))
    mine = tmp_path / "my-loras"
    mine.mkdir()
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, "webui")
    args = parser.parse_args(["--data-dir", str(tmp_path / "data"), *(["--lora-dir", str(mine)] if own_folder else [])])
    assert cli.run(args) == 0 and len(served) == 1
    out = capsys.readouterr().out
    demo_folder = str(tmp_path / "data" / "models" / "Lora")
    if own_folder:
        assert demo_folder not in out and "demo LoRAs" not in out
        assert f"0 LoRAs in {mine}," in out
    else:
        assert f"demo LoRAs in {demo_folder}" in out and f"LoRAs in {demo_folder}," in out
