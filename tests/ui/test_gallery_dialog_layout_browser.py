"""Chromium: the gallery's Info and Edit dialogs keep their own look inside gradio's page on
current gradio and on gradio 3.41.2 (A1111's): centred in the window, and the editor's Favorite
and NSFW checkboxes drawn as checkboxes, not as gradio-styled empty pills."""

from __future__ import annotations

from typing import Any

import pytest

from .test_gallery_browser import card, show_all

pytestmark = [pytest.mark.browser]

DIALOG_BOX = """() => {
  const d = document.querySelector('dialog[open]');
  const r = d.getBoundingClientRect();
  return {top: r.top, bottom: innerHeight - r.bottom, left: r.left, right: innerWidth - r.right,
          height: r.height, width: r.width};
}"""

CHECKBOXES = """() => [...document.querySelectorAll('dialog[open] input[type=checkbox]')].map(c => {
  const r = c.getBoundingClientRect();
  return {name: c.name, width: r.width, height: r.height, appearance: getComputedStyle(c).appearance};
})"""


def _centred(page: Any) -> dict[str, float]:
    box: dict[str, float] = page.evaluate(DIALOG_BOX)
    assert box["height"] > 100 and box["width"] > 200, box
    assert abs(box["top"] - box["bottom"]) <= 2 and box["top"] > 8, box  # not pushed against the bottom
    assert abs(box["left"] - box["right"]) <= 2, box
    return box


@pytest.mark.parametrize("button", [".lp-info", ".lp-edit"])
def test_dialogs_sit_in_the_middle_of_the_window(page: Any, button: str) -> None:
    show_all(page)
    card(page, "catgirl").locator(button).click()
    page.locator(".lp-details-table, .lp-editor").first.wait_for()
    _centred(page)
    page.locator(".lp-close").click()


def test_editor_checkboxes_are_square_boxes_that_toggle(page: Any) -> None:
    show_all(page)
    card(page, "editable").locator(".lp-edit").click()
    page.locator(".lp-editor").wait_for()
    boxes = page.evaluate(CHECKBOXES)
    assert [b["name"] for b in boxes] == ["favorite", "nsfw"]
    for b in boxes:
        assert b["width"] >= 12 and b["height"] >= 12, b
        assert abs(b["width"] - b["height"]) <= 2, b  # square, not a pill
        assert b["appearance"] != "none", b  # the browser draws the box and its tick
    favorite = page.locator(".lp-editor input[name=favorite]")
    favorite.click()
    assert favorite.is_checked()
    page.locator(".lp-close").click()
