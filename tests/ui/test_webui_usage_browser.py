"""End to end: a generation in `loraprompt webui` (built-in demo) is counted for the LoRA it
applied, and the gallery tab, already open and sorted by "Most used", puts that LoRA first on its
next poll, without a refresh or a rescan."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def webui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m loraprompt webui` on the demo with a temporary data dir, until the module ends."""
    data = tmp_path_factory.mktemp("webui-usage")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log_path = data / "webui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "loraprompt", "webui", "--data-dir", str(data), "--port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(proc, url + "loraprompt/gallery/state", log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"webui exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"webui did not start in {timeout} s: {log.read_text(errors='replace')[-3000:]}")


def first_card(page: Any) -> str:
    return str(page.locator(".lp-card.lp-cursor .lp-name").inner_text())


def test_generation_moves_its_lora_to_the_top_of_most_used(browser: Any, webui_url: str) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(webui_url)
        page.locator("#lp-prompt textarea").wait_for(timeout=30_000)
        page.get_by_role("tab", name="LoRA gallery").click()
        page.locator(".lp-card").first.wait_for(timeout=30_000)
        page.locator(".lp-sort").select_option("uses")
        page.wait_for_function("() => document.querySelector('.lp-card.lp-cursor') !== null")
        names = page.locator(".lp-card .lp-name").all_inner_texts()
        assert "demo_warm" in names and first_card(page) != "demo_warm"  # nothing used yet: by name

        page.get_by_role("tab", name="txt2img").click()
        page.locator("#lp-prompt textarea").fill("a lighthouse <lora:demo_warm:0.7>")
        page.locator("#lp-steps input[type=number]").fill("2")
        page.locator("#lp-generate").click()
        page.wait_for_function(
            "() => document.querySelector('#lp-infotext textarea').value.includes('Lora hashes')", timeout=120_000)

        page.get_by_role("tab", name="LoRA gallery").click()
        page.wait_for_function(
            "() => document.querySelector('.lp-card.lp-cursor .lp-name').textContent === 'demo_warm'", timeout=30_000)
        title = page.locator(".lp-card.lp-cursor").get_attribute("title")
        assert "Used in 1 generation," in title
    finally:
        context.close()
