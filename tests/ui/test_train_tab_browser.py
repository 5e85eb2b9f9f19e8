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


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    """One web UI for the file (each start costs ~20 s); every test trains under its own name."""
    with WebUI(tmp_path_factory.mktemp("train-tab") / "data") as server:
        yield server


def fill_form(page: Any, images: Path, name: str, fields: tuple[tuple[str, str], ...] = ()) -> None:
    """Open the Train tab, drop every file of `images`, name the LoRA and set the `fields` (id, value)."""
    page.get_by_role("tab", name="Train").click()
    page.locator("#lp-train-files input[type=file]").set_input_files([str(p) for p in sorted(images.iterdir())])
    page.locator("#lp-train-name textarea, #lp-train-name input").first.fill(name)
    for field, value in fields:
        page.locator(f"#lp-train-{field} input").first.fill(value)


def test_train_tab_trains_in_a_worker_and_the_lora_reaches_the_gallery(browser: Any, webui: WebUI,
                                                                       tmp_path: Path) -> None:
    images = write_images(tmp_path / "photos", count=3)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_train_tab.png", viewport=(1400, 1100)) as page:
        fill_form(page, images, "tab_trained", (("steps", "4"), ("rank", "4"), ("resolution", "64"), ("sample-every", "2")))
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


def test_a_stopped_run_resumes_from_its_step_in_the_tab(browser: Any, webui: WebUI, tmp_path: Path) -> None:
    """Found in a browser pass: Stop says it "saves a resumable state", but the tab had no way to
    resume it (its message named the CLI's --resume), and Start with the same name began at step 0."""
    images = write_images(tmp_path / "photos", count=3)
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_train_resume.png", viewport=(1400, 1100)) as page:
        fill_form(page, images, "resumed", (("steps", "40"), ("rank", "4"), ("resolution", "64"), ("sample-every", "0")))
        page.locator("#lp-train-start").click()
        status = page.locator("#lp-train-status")
        page.wait_for_function("() => /step [0-9]+\\/40/.test(document.querySelector('#lp-train-status').innerText)",
                               timeout=180_000)
        page.locator("#lp-train-stop").click()
        page.wait_for_function("() => document.querySelector('#lp-train-status').innerText.includes(': stopped')",
                               timeout=120_000)
        stopped = int(status.inner_text().split("interrupted at step ")[1].split(";")[0])
        assert stopped > 0 and "Resume" in status.inner_text()
        page.locator("#lp-train-steps input").first.fill("5")  # the saved run's settings win, as --resume's
        page.locator("#lp-train-resume").click()
        page.wait_for_function("() => document.querySelector('#lp-train-status').innerText.includes(': done')",
                               timeout=300_000)
        assert f"resumed at step {stopped}" in status.inner_text() and "step 40/40" in status.inner_text()
    with safe_open(str(webui.data_dir / "models" / "Lora" / "resumed.safetensors"), "pt") as f:
        assert f.metadata()["ss_max_train_steps"] == "40"


def test_a_name_another_lora_in_a_subfolder_has_is_refused_before_training(browser: Any, webui: WebUI,
                                                                         tmp_path: Path) -> None:
    """Found in a browser pass: training "demo_neon" (the demo has styles/demo_neon.safetensors)
    wrote Lora/demo_neon.safetensors and said "it is in the LoRA gallery as <lora:demo_neon:1>", but
    that tag applies styles/demo_neon, as A1111 resolves it; the new LoRA needed another tag."""
    images = write_images(tmp_path / "photos", count=2)
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_train_taken_name.png", viewport=(1400, 1100)) as page:
        fill_form(page, images, "demo_neon")
        page.locator("#lp-train-start").click()
        page.get_by_text("styles/demo_neon.safetensors is already named demo_neon").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # the status polls once a second: a job started would show by now
        status = page.locator("#lp-train-status").inner_text()  # "No training yet.", or another test's run
        assert "demo_neon" not in status and ": training" not in status  # no job started
    assert not (webui.data_dir / "models" / "Lora" / "demo_neon.safetensors").exists()
