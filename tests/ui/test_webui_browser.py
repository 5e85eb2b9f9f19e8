"""End to end: `loraprompt webui` on the built-in demo, driven by Chromium. A card click inserts a
demo LoRA's tag, Generate shows a progress bar and then an image, and the saved PNG's infotext
names the LoRA with its A1111 hash. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library.hashes import file_hashes

from .conftest import SCREENSHOTS, WebUI, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    with WebUI(tmp_path_factory.mktemp("webui")) as server:
        yield server


@pytest.fixture
def ui_page(browser: Any, webui: WebUI, request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_page(browser, webui.url, "#lp-prompt textarea", f"webui_{request.node.name}.png",
                   viewport=(1400, 1000)) as page:
        yield page


def test_generate_with_demo_lora_names_it_in_infotext(ui_page: Any, webui: WebUI) -> None:
    page = ui_page
    assert "draws noise" in page.locator("#lp-demo-notice").inner_text()
    page.locator("#lp-prompt textarea").fill("a lighthouse at dusk <lora:demo_warm:0.7>")
    page.locator("#lp-steps input[type=number]").fill("30")
    page.locator("#lp-seed input").fill("42")
    page.locator("#lp-generate").click()
    # gradio's status tracker shows our progress description while sampling runs.
    page.get_by_text("Sampling").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "webui_progress.png"))
    infotext_box = page.locator("#lp-infotext textarea")
    page.wait_for_function(
        "() => document.querySelector('#lp-infotext textarea').value.includes('Lora hashes')", timeout=300_000
    )
    page.locator("#lp-image img").wait_for(timeout=30_000)
    infotext = infotext_box.input_value()

    lora = webui.data_dir / "models" / "Lora" / "demo_warm.safetensors"
    expected_hash = file_hashes(lora)["a1111_short"]
    fields = parse_infotext(infotext)
    assert fields["Prompt"] == "a lighthouse at dusk <lora:demo_warm:0.7>"
    assert fields["Seed"] == "42" and fields["Steps"] == "30"
    assert parse_lora_hashes(fields["Lora hashes"]) == {"demo_warm": expected_hash}

    saved = Path(page.locator("#lp-saved textarea").input_value())
    # Dropping the saved PNG back in reads its infotext, as A1111's PNG Info does.
    page.get_by_text("Paste generation parameters").click()
    page.locator("#lp-paste-png input[type=file]").set_input_files(str(saved))
    page.wait_for_function("() => document.querySelector('#lp-paste-text textarea').value.includes('Lora hashes')",
                           timeout=30_000)
    assert page.locator("#lp-paste-text textarea").input_value() == infotext
    assert saved.parent.parent.parent == webui.data_dir / "outputs"
    with Image.open(saved) as png:
        assert png.text["parameters"] == infotext
        assert png.size == (256, 256)
    assert "demo_warm" in page.locator("#lp-diagnostics").inner_text()


def test_unknown_lora_is_reported_and_image_still_made(ui_page: Any) -> None:
    page = ui_page
    page.locator("#lp-prompt textarea").fill("a cat <lora:no_such_lora:1>")
    page.locator("#lp-steps input[type=number]").fill("4")
    page.locator("#lp-generate").click()
    diagnostics = page.locator("#lp-diagnostics")
    diagnostics.get_by_text("no_such_lora").first.wait_for(timeout=300_000)
    assert "not found" in diagnostics.inner_text()
    assert "Lora hashes" not in page.locator("#lp-infotext textarea").input_value()


def test_gallery_card_click_inserts_tag_into_txt2img_prompt(ui_page: Any) -> None:
    page = ui_page
    page.get_by_role("tab", name="LoRA gallery").click()
    card = page.locator(".lp-card", has_text="demo_sketch").first
    card.wait_for(timeout=30_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.lp-card img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )
    page.screenshot(path=str(SCREENSHOTS / "webui_gallery.png"))
    card.click()
    page.get_by_role("tab", name="txt2img").click()
    prompt = page.locator("#lp-prompt textarea")
    page.wait_for_function("() => document.querySelector('#lp-prompt textarea').value.includes('<lora:demo_sketch')",
                           timeout=10_000)
    assert "sketch style" in prompt.input_value()  # the sidecar's activation text comes along


def test_pasting_infotext_fills_the_fields_and_remaps_lora_by_hash(ui_page: Any, webui: WebUI) -> None:
    page = ui_page
    neon = file_hashes(webui.data_dir / "models" / "Lora" / "styles" / "demo_neon.safetensors")["a1111_short"]
    text = ("x <lora:their_neon_v3:0.5> <lora:unknown:1>\nNegative prompt: blurry\nSteps: 12, Sampler: DPM++ 2M, "
            f'Schedule type: Karras, CFG scale: 5.5, Seed: 7, Size: 320x192, Lora hashes: "their_neon_v3: {neon}, '
            'unknown: ffffffffffff"')
    # a paste uses the hashes the library knows (as A1111's): a generation with demo_neon makes its known
    page.locator("#lp-prompt textarea").fill("a cat <lora:demo_neon:0.5>")
    page.locator("#lp-steps input[type=number]").fill("1")
    page.locator("#lp-generate").click()
    page.wait_for_function("() => document.querySelector('#lp-infotext textarea').value.includes('demo_neon: ')",
                           timeout=120_000)
    page.get_by_text("Paste generation parameters").click()
    page.locator("#lp-paste-text textarea").fill(text)
    page.locator("#lp-paste").click()
    page.wait_for_function("() => document.querySelector('#lp-negative textarea').value === 'blurry'", timeout=10_000)
    assert page.locator("#lp-prompt textarea").input_value() == "x <lora:demo_neon:0.5> <lora:unknown:1>"
    assert page.locator("#lp-steps input[type=number]").input_value() == "12"
    assert page.locator("#lp-width input[type=number]").input_value() == "320"
    assert page.locator("#lp-height input[type=number]").input_value() == "192"
    assert page.locator("#lp-seed input").input_value() == "7"
    assert page.locator("#lp-sampler input").input_value() == "DPM++ 2M Karras"


def _pngs(webui: WebUI) -> list[Path]:
    return sorted((webui.data_dir / "outputs").glob("txt2img-images/*/*.png"))


def _long_generation(page: Any, prompt: str) -> None:
    page.locator("#lp-prompt textarea").fill(prompt)
    page.locator("#lp-steps input[type=number]").fill("150")
    page.locator("#lp-generate").click()
    page.get_by_text("Sampling").first.wait_for(timeout=60_000)


def _held_resumes(held: list[Any]) -> Any:
    """A route handler that holds the page load's resume requests (a task id of "": nothing to pick
    up) in `held`, as a busy server answers them late, and lets every other request through; once
    `held` has a None, it holds nothing."""
    import json

    def handle(route: Any) -> None:
        body = route.request.post_data or ""
        try:
            data = json.loads(body).get("data")
        except ValueError:
            data = None
        if data == [""] and None not in held:
            held.append(route)
        else:
            route.continue_()

    return handle


def test_a_reloaded_page_picks_up_the_running_generation_and_interrupts_it(webui: WebUI, browser: Any) -> None:
    """As A1111 restores a task kept in localStorage: a page reloaded while a generation runs shows
    its progress, then its result (here after the reloaded page's Interrupt); a generation that
    ended while no page was open shows its result in the next page opened, once. Found in CI: a
    page load's resume that ended after the Generate click (a busy server) forgot the new task."""
    held: list[Any] = []
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_resume_late_load.png",
                   routes={"**/queue/join*": _held_resumes(held)}) as page:
        _long_generation(page, "a very long render")
        assert held, "the page load's resume requests were not seen"
        for route in held[:]:
            held.remove(route)
            route.continue_()
        held.append(None)  # holds no more
        page.wait_for_timeout(1500)  # the held resumes end (nothing to pick up) and their listeners run
        assert page.evaluate("() => localStorage.getItem('lp-task-txt2img')"), "the running task was forgotten"
        _follow_after_reload(page, webui, browser)


def _follow_after_reload(page: Any, webui: WebUI, browser: Any) -> None:
    made = len(_pngs(webui))
    page.reload()
    page.locator("#lp-prompt textarea").wait_for()
    page.get_by_text("Sampling").first.wait_for(timeout=30_000)  # the job's progress, in a page that started nothing
    page.screenshot(path=str(SCREENSHOTS / "webui_progress_after_reload.png"))
    page.locator("#lp-interrupt").click()
    page.wait_for_function("() => document.querySelector('#lp-infotext textarea').value.includes('Steps: 150')",
                           timeout=120_000)
    page.locator("#lp-image img").wait_for(timeout=30_000)  # shown, though not saved (below)
    panel = page.locator("#lp-diagnostics").inner_text()
    match = re.search(r"interrupted after step (\d+) of 150", panel)
    assert match is not None and int(match.group(1)) < 150, panel
    assert "1 unfinished image(s) not saved" in panel and made == len(_pngs(webui)), panel  # as A1111's default
    assert page.locator("#lp-saved textarea").input_value() == ""
    assert "a very long render" in page.locator("#lp-infotext textarea").input_value()
    page.wait_for_function("() => localStorage.getItem('lp-task-txt2img') === null", timeout=10_000)  # shown: forgotten

    # a second generation whose page is gone before it ends: another browser follows it (its task
    # id copied over) and stops it, so that it has ended when its own page is opened again
    _long_generation(page, "a render nobody watched")
    task = page.evaluate("() => localStorage.getItem('lp-task-txt2img')")
    page.goto("about:blank")
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_resume_other_browser.png") as other:
        other.evaluate("id => localStorage.setItem('lp-task-txt2img', id)", task)
        other.reload()
        other.get_by_text("Sampling").first.wait_for(timeout=30_000)
        other.locator("#lp-interrupt").click()
        other.wait_for_function("() => document.querySelector('#lp-infotext textarea').value.includes('nobody watched')",
                                timeout=60_000)  # the job has ended on the server
    page.goto(webui.url)
    page.locator("#lp-infotext textarea").wait_for()
    page.wait_for_function("() => document.querySelector('#lp-infotext textarea').value.includes('nobody watched')",
                           timeout=60_000)
    page.locator("#lp-image img").wait_for(timeout=30_000)
    assert made == len(_pngs(webui))
    page.wait_for_function("() => localStorage.getItem('lp-task-txt2img') === null", timeout=10_000)


def test_skip_ends_the_first_batch_and_the_second_runs_on(ui_page: Any) -> None:
    """A1111's Skip, beside Interrupt: the batch being sampled ends (kept, unfinished) and the next
    batch of the batch count starts; Interrupt then stops that one."""
    page = ui_page
    page.locator("#lp-batch-count input[type=number]").fill("2")
    _long_generation(page, "two long renders")
    page.locator("#lp-skip").click()
    page.wait_for_timeout(1500)  # the second batch starts at once
    page.locator("#lp-interrupt").click()
    page.wait_for_function("() => document.querySelector('#lp-infotext textarea').value.includes('two long renders')",
                           timeout=120_000)
    panel = page.locator("#lp-diagnostics").inner_text()
    assert "batch 1 of 2 skipped" in panel and re.search(r"interrupted after step \d+ of 300", panel), panel
    page.wait_for_function("() => document.querySelectorAll('#lp-batch img').length >= 2", timeout=30_000)
    page.locator("#lp-batch-count input[type=number]").fill("1")


def test_applying_an_empty_paste_box_keeps_the_prompt_and_says_why(ui_page: Any) -> None:
    """Found by a user pass: "Apply to the fields" with nothing pasted emptied the prompt and the
    negative prompt without a word (a text without parameters is a prompt, and "" was taken as one)."""
    page = ui_page
    page.locator("#lp-prompt textarea").fill("a prompt I spent an hour on")
    page.locator("#lp-negative textarea").fill("blurry")
    page.get_by_text("Paste generation parameters").click()
    page.locator("#lp-paste-text textarea").fill("  \n")
    page.locator("#lp-paste").click()
    page.get_by_text("Nothing to apply").first.wait_for(timeout=10_000)
    assert page.locator("#lp-prompt textarea").input_value() == "a prompt I spent an hour on"
    assert page.locator("#lp-negative textarea").input_value() == "blurry"


def test_the_clip_skip_slider_ends_at_the_text_encoders_layers(ui_page: Any) -> None:
    """Found in a browser pass: Clip skip 4 or more on the demo (a 2-layer text encoder: hidden
    states 0 to 2) showed only "tuple index out of range"; then the page offered 1 to 12 while the
    engine took 3 and the API 2. The slider now ends where the APIs and the engine do (the engine's
    refusal by name: test_webui_engine)."""
    page = ui_page
    for kind in ("number", "range"):
        assert page.locator(f"#lp-clip-skip input[type={kind}]").get_attribute("max") == "2", kind
