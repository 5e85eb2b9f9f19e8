"""End to end: a generation in `loraprompt webui` (built-in demo) is counted for the LoRA it
applied, and the gallery tab, already open and sorted by "Most used", puts that LoRA first on its
next poll, without a refresh or a rescan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import WebUI, open_page

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
