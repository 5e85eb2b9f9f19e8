"""The card grid is virtualised: with hundreds of files only the visible rows are in the page, and
scrolling or the keyboard brings any card in. Both gradio versions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import SD1_KEYS, DemoServer, gradio_pythons, open_page, write_lora

pytestmark = [pytest.mark.browser]
FILES = 400


@pytest.fixture(scope="module", params=gradio_pythons())
def big_demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    base = tmp_path_factory.mktemp("big")
    for i in range(FILES):
        write_lora(base / "Lora" / f"set_{i % 4}" / f"lora_{i:04d}.safetensors", SD1_KEYS, seed=i)
    with DemoServer(request.param, base / "Lora", base / "cache") as server:
        yield server


@pytest.fixture
def big_page(browser: Any, big_demo: DemoServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_page(browser, big_demo.url, ".lp-card", f"{request.node.name}.png", full_page=False) as page:
        # the first 300 cards come first, the rest in a second request: wait for the whole list
        page.wait_for_function(f"() => document.querySelector('.lp-count').textContent === '{FILES} of {FILES}'")
        yield page


def cards_in_dom(page: Any) -> int:
    return int(page.evaluate("document.querySelectorAll('.lp-card').length"))


def test_only_visible_rows_are_in_the_page_and_scrolling_reaches_the_end(big_page: Any) -> None:
    initial = cards_in_dom(big_page)
    assert 0 < initial < 80
    big_page.locator(".lp-scroller").evaluate("s => { s.scrollTop = s.scrollHeight; }")
    last = big_page.locator(".lp-card", has=big_page.locator(".lp-name", has_text=f"lora_{FILES - 1:04d}"))
    last.wait_for()
    assert last.is_visible() and cards_in_dom(big_page) < 80
    assert big_page.locator(".lp-card", has=big_page.locator(".lp-name", has_text="lora_0000")).count() == 0


def test_keyboard_end_moves_to_the_last_card_and_enter_inserts_it(big_page: Any) -> None:
    big_page.locator(".lp-scroller").focus()
    big_page.keyboard.press("End")
    cursor = big_page.locator(".lp-card.lp-cursor .lp-name")
    cursor.wait_for()
    assert cursor.inner_text() == f"lora_{FILES - 1:04d}"
    big_page.keyboard.press("Enter")
    big_page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value !== ''")
    assert big_page.locator("#demo_prompt textarea").input_value() == f"<lora:lora_{FILES - 1:04d}:1>"


def test_first_page_counts_the_whole_library_until_the_rest_arrives(browser: Any, big_demo: DemoServer) -> None:
    """The first 300 cards are drawn before the full list comes; meanwhile the count and the status
    say how many the library holds, and the held-back list then completes the grid."""
    held: list[Any] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()

        def hold(route: Any) -> None:  # playwright wants a function here, not a bound builtin
            held.append(route)

        page.route(lambda url: url.endswith("/cards"), hold)  # the full list; the first page has a query
        page.goto(big_demo.url)
        page.locator(".lp-card").first.wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelector('.lp-count').textContent !== ''")
        assert page.locator(".lp-count").inner_text() == f"300 of {FILES}"
        assert f"first 300 of {FILES}" in page.locator(".lp-status").inner_text()
        assert len(held) == 1
        held[0].continue_()
        page.wait_for_function(f"() => document.querySelector('.lp-count').textContent === '{FILES} of {FILES}'")
        assert page.locator(".lp-status").inner_text() == ""
    finally:
        context.close()
