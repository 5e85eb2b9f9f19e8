"""Chromium sorts the gallery demo's cards by "Most used" and "Last used" from the generations the
library recorded (`Library.note_use`, as the web UI and the A1111 extension call it), on current
gradio and on gradio 3.41.2. The demo's loaded model is SDXL, so its two SDXL cards are shown."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from loraprompt.library import Library

from .conftest import XSS, DemoServer, gradio_pythons, make_gallery_folder

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module", params=gradio_pythons())
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """The demo over a library whose history says: watercolor used twice, then sketchy_lines once."""
    base = tmp_path_factory.mktemp("gallery-usage")
    lora, cache = make_gallery_folder(base), base / "cache"
    library = Library([str(lora)], str(cache))
    library.note_use([str(lora / "styles" / "watercolor.safetensors")])
    library.note_use([str(lora / "styles" / "watercolor.safetensors")])
    library.note_use([str(lora / "styles" / "sketchy_lines.safetensors")])
    with DemoServer(request.param, lora, cache, family="sdxl") as server:
        yield server


def shown_order(page: Any) -> list[str]:
    """Card names in reading order (top to bottom, left to right)."""
    return list(page.evaluate("""() => [...document.querySelectorAll('.lp-card')]
        .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top
                        || a.getBoundingClientRect().left - b.getBoundingClientRect().left)
        .map((c) => c.querySelector('.lp-name').textContent)"""))


def sort_by(page: Any, key: str, first: str) -> list[str]:
    page.locator(".lp-sort").select_option(key)
    page.wait_for_function("(n) => document.querySelector('.lp-card.lp-cursor .lp-name').textContent === n", arg=first)
    return shown_order(page)


def test_most_used_and_last_used_sorts_follow_the_recorded_generations(page: Any) -> None:
    options = page.locator(".lp-sort option").all_inner_texts()
    assert "Most used" in options and "Last used" in options
    assert shown_order(page) == ["sketchy_lines", "watercolor"]  # by name
    assert sort_by(page, "uses", "watercolor") == ["watercolor", "sketchy_lines"]
    assert sort_by(page, "recent", "sketchy_lines") == ["sketchy_lines", "watercolor"]
    title = page.locator(".lp-card", has=page.locator(".lp-name", has_text="watercolor")).get_attribute("title")
    assert "Used in 2 generations" in title


def test_never_used_cards_follow_the_used_ones_by_name(page: Any) -> None:
    page.locator(".lp-filter-toggle", has_text="Show them").click()
    order = sort_by(page, "uses", "watercolor")
    assert order[:2] == ["watercolor", "sketchy_lines"]
    assert order[2:] == [XSS, "catgirl", "editable", "ink_wash"]  # never used: by name, as the name sort has them
    page.locator(".lp-order").click()  # descending: least used first
    page.wait_for_function("() => document.querySelector('.lp-card.lp-cursor .lp-name').textContent !== 'watercolor'")
    assert shown_order(page)[-1] == "watercolor"


def test_sort_choice_is_remembered_across_reloads(page: Any) -> None:
    sort_by(page, "uses", "watercolor")
    page.reload()
    page.locator(".lp-card").first.wait_for(timeout=30_000)
    assert page.locator(".lp-sort").input_value() == "uses"
    assert shown_order(page) == ["watercolor", "sketchy_lines"]
