"""Chromium, on current gradio and on gradio 3.41.2: a file in the LoRA folder that cannot be read
(empty, cut short, not a safetensors file) keeps its card, and the card says why it cannot be used,
without opening Info. Screenshots in artifacts/screenshots/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.browser import gradio_pythons

from .conftest import SD1_KEYS, DemoServer, open_page, write_lora

pytestmark = [pytest.mark.browser]


@pytest.mark.parametrize("python", gradio_pythons())
def test_a_card_of_an_unreadable_file_says_why_on_the_card(browser: Any, tmp_path: Path, python: str) -> None:
    """Found in a browser pass: the card of a 0-byte or text file looked like any LoRA with an
    unknown base model ("?"), so a user clicked it and learnt only at Generate that the file is
    broken; the reason was in the card's data all along (and in Info)."""
    lora = tmp_path / "Lora"
    write_lora(lora / "good.safetensors", SD1_KEYS)
    (lora / "empty.safetensors").write_bytes(b"")
    (lora / "notes.safetensors").write_text("these are my notes, not a LoRA", encoding="utf-8")
    with DemoServer(python, lora, tmp_path / "cache") as demo, \
            open_page(browser, demo.url, ".lp-card", f"gallery_broken_files_{demo.gradio}.png") as page:
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 3")

        def card(name: str) -> Any:
            return page.locator(".lp-card", has=page.locator(".lp-name", has_text=name))

        assert "too short for a safetensors header" in card("empty").locator(".lp-problem").inner_text()
        assert card("notes").locator(".lp-problem").count() == 1
        assert "too short" in str(card("empty").get_attribute("title"))
        assert card("good").locator(".lp-problem").count() == 0
        assert card("empty").locator(".lp-size").inner_text() == "0 B"  # it said "1 KB"
        assert card("good").locator(".lp-size").inner_text().endswith(" KB")
