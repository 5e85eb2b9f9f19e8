"""The web UI's Train tab in Chromium, on the built-in demo: drop images, train a few steps in the
worker process, watch the loss plot and the samples fill in, and find the new LoRA in the gallery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from tests.train.conftest import write_images

from .conftest import SCREENSHOTS, WebUI, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def webui(tmp_path: Path) -> Iterator[WebUI]:
    with WebUI(tmp_path / "data") as server:
        yield server


def test_train_tab_trains_in_a_worker_and_the_lora_reaches_the_gallery(browser: Any, webui: WebUI,
                                                                       tmp_path: Path) -> None:
    images = write_images(tmp_path / "photos", count=3)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_train_tab.png", viewport=(1400, 1100)) as page:
        page.get_by_role("tab", name="Train").click()
        page.locator("#lp-train-files input[type=file]").set_input_files([str(p) for p in sorted(images.iterdir())])
        page.locator("#lp-train-name textarea, #lp-train-name input").first.fill("tab_trained")
        for field, value in (("steps", "4"), ("rank", "4"), ("resolution", "64"), ("sample-every", "2")):
            page.locator(f"#lp-train-{field} input").first.fill(value)
        page.locator("#lp-train-start").click()
        # The page polls once a second, so a fast machine trains these 4 steps between two polls:
        # wait for the end only (waiting for an intermediate 'step 2/4' timed out on such a machine).
        page.wait_for_function("() => document.querySelector('#lp-train-status').innerText.includes(': done')",
                               timeout=180_000)
        status = page.locator("#lp-train-status").inner_text()
        assert "step 4/4" in status and "<lora:tab_trained:1>" in status and "broken.jpg" in status
        page.locator("#lp-train-samples img").first.wait_for(timeout=30_000)
        assert page.locator("#lp-train-loss canvas, #lp-train-loss svg").count() > 0
        page.screenshot(path=str(SCREENSHOTS / "webui_train_done.png"), full_page=True)
        page.get_by_role("tab", name="LoRA gallery").click()
        page.locator(".lp-card", has_text="tab_trained").first.wait_for(timeout=60_000)
    lora = webui.data_dir / "models" / "Lora" / "tab_trained.safetensors"
    with safe_open(str(lora), "pt") as f:
        assert f.metadata()["ss_max_train_steps"] == "4"
    assert (lora.with_suffix(".json")).exists() and lora.with_name("tab_trained.preview.png").exists()
