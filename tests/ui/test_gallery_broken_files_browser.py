"""Chromium, on current gradio and on gradio 3.41.2: a file in the LoRA folder that cannot be read
(empty, cut short, not a safetensors file) keeps its card, and the card says why it cannot be used,
without opening Info. Screenshots in artifacts/screenshots/."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

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
    # seen in a real A1111: a cover value that is no image got a thumbnail URL that answered 422,
    # and the card an empty picture; and a thumbnail that fails to load for any other reason
    write_lora(lora / "badcover.safetensors", SD1_KEYS, {"ssmd_cover_images": "not json"})
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "orange").save(png, format="PNG")
    write_lora(lora / "covered.safetensors", SD1_KEYS, {"ssmd_cover_images": json.dumps([base64.b64encode(png.getvalue()).decode()])})
    failing = {"**/thumb?id=*covered*": lambda route: route.fulfill(status=404, body="gone")}
    with DemoServer(python, lora, tmp_path / "cache") as demo, \
            open_page(browser, demo.url, ".lp-card", f"gallery_broken_files_{demo.gradio}.png", routes=failing) as page:
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 5")

        def card(name: str) -> Any:
            return page.locator(".lp-card", has=page.locator(".lp-name", has_text=name))

        assert "too short for a safetensors header" in card("empty").locator(".lp-problem").inner_text()
        assert card("notes").locator(".lp-problem").count() == 1
        assert "too short" in str(card("empty").get_attribute("title"))
        assert card("good").locator(".lp-problem").count() == 0
        assert card("empty").locator(".lp-size").inner_text() == "0 B"  # it said "1 KB"
        assert card("good").locator(".lp-size").inner_text().endswith(" KB")
        assert card("badcover").locator("img").count() == 0 and card("badcover").locator(".lp-initial").inner_text() == "B"
        card("covered").locator(".lp-initial").wait_for(timeout=10_000)  # the letter, once its thumbnail failed
        assert card("covered").locator(".lp-thumb img").count() == 0
