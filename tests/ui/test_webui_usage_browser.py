"""End to end: a generation in `loraprompt webui` (built-in demo) is counted for the LoRA it
applied, and the gallery tab, already open and sorted by "Most used", puts that LoRA first on its
next poll, without a refresh or a rescan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import SCREENSHOTS, WebUI, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    """A webui of its own, so no other test's generations are in its history."""
    with WebUI(tmp_path_factory.mktemp("webui-usage")) as server:
        yield server


def first_card(page: Any) -> str:
    return str(page.locator(".lp-card.lp-cursor .lp-name").inner_text())


def test_generation_moves_its_lora_to_the_top_of_most_used(browser: Any, webui: WebUI) -> None:
    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_usage_most_used.png",
                   viewport=(1400, 1000)) as page:
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


def test_replace_preview_saves_the_selected_batch_image_beside_the_lora(browser: Any, webui: WebUI) -> None:
    """A1111's "Replace preview", in the gallery's editor: the image selected in the batch gallery
    (not the grid shown as the result) is written as `<stem>.png` with its generation parameters,
    and the card's thumbnail follows."""
    from pathlib import Path

    from PIL import Image

    with open_page(browser, webui.url, "#lp-prompt textarea", "webui_replace_preview.png",
                   viewport=(1400, 1000)) as page:
        page.get_by_role("tab", name="LoRA gallery").click()
        page.locator(".lp-card").first.wait_for(timeout=30_000)
        card = page.locator(".lp-card", has=page.locator(".lp-name", has_text="demo_sketch")).first
        card.locator(".lp-edit").click()
        assert page.locator(".lp-replace-preview").is_disabled()  # nothing generated yet: nothing to use
        assert "Generate an image" in page.locator(".lp-preview-replace").inner_text()
        page.locator(".lp-dialog .lp-close").click()
        old_thumb = card.locator(".lp-thumb img").get_attribute("src")

        page.get_by_role("tab", name="txt2img").click()
        page.locator("#lp-prompt textarea").fill("a harbour <lora:demo_sketch:0.5>")
        for elem_id, value in (("lp-steps", 2), ("lp-width", 64), ("lp-height", 64), ("lp-batch-size", 2)):
            page.locator(f"#{elem_id} input[type=number]").fill(str(value))
        page.locator("#lp-generate").click()
        page.wait_for_function("() => document.querySelectorAll('#lp-batch img').length >= 2", timeout=120_000)
        saved = [Path(p) for p in page.locator("#lp-saved textarea").input_value().splitlines()]
        assert len(saved) == 3  # the grid, then the two images
        page.locator("#lp-batch img").nth(1).click()  # select the second image of the batch
        page.wait_for_function("() => document.querySelector('#lp-batch .thumbnail-item.selected img') !== null")

        page.get_by_role("tab", name="LoRA gallery").click()
        card.locator(".lp-edit").click()
        chosen = page.locator(".lp-replace-thumb")
        assert chosen.get_attribute("src") == page.locator("#lp-batch .thumbnail-item.selected img").first.get_attribute("src")
        page.locator(".lp-replace-preview").click()
        page.wait_for_function(
            "() => (document.querySelector('.lp-preview-status') || {}).textContent"
            "?.startsWith('Preview saved')", timeout=30_000)
        assert page.locator(".lp-preview-status").inner_text() == "Preview saved to demo_sketch.png"
        preview = webui.data_dir / "models" / "Lora" / "demo_sketch.png"
        page.screenshot(path=str(SCREENSHOTS / "webui_replace_preview_dialog.png"))
        assert preview.read_bytes() == saved[2].read_bytes()  # the second image, its parameters chunk included
        with Image.open(preview) as png:
            assert "Seed:" in png.text["parameters"] and "demo_sketch" in png.text["parameters"]
        page.locator(".lp-dialog .lp-close").click()
        page.wait_for_function("([old]) => { const c = [...document.querySelectorAll('.lp-card')].find((e) =>"
                               " e.querySelector('.lp-name').textContent === 'demo_sketch');"
                               " const img = c && c.querySelector('.lp-thumb img'); return img && img.src && img.getAttribute('src') !== old; }",
                               arg=[old_thumb], timeout=10_000)
