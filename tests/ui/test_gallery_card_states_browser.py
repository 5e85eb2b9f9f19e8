"""Chromium: a card whose file cannot be loaded says so on the card itself: a broken file (its
reason in the badge's tooltip) and a file on a linked drive that was unplugged while the page was
open (the page redraws it as offline). Before, both looked like every other card, and a click
inserted a tag that loads nothing; the reason was only in the details view."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import SD1_KEYS, DemoServer, open_page, write_lora

pytestmark = [pytest.mark.browser]

STATES = """() => Object.fromEntries([...document.querySelectorAll('.lp-card')].map(card => [
  card.querySelector('.lp-name').textContent,
  [card.classList.contains('lp-unusable'), card.querySelector('.lp-state')?.textContent ?? null,
   card.querySelector('.lp-state')?.title ?? null]]))"""


def test_broken_and_offline_cards_say_so(browser: Any, tmp_path: Path) -> None:
    lora, media = tmp_path / "Lora", tmp_path / "media"
    write_lora(lora / "good.safetensors", SD1_KEYS, {}, seed=1)
    (lora / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # header says 8 bytes, has 2
    write_lora(media / "far.safetensors", SD1_KEYS, {}, seed=2)
    (lora / "._good.safetensors").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))  # macOS's AppleDouble beside it
    write_lora(lora / ".old" / "retired.safetensors", SD1_KEYS, {}, seed=3)  # a dot-folder
    (lora / "usb").symlink_to(media)
    past = time.time() - 60
    for path in (lora / "broken.safetensors", lora / "good.safetensors", media / "far.safetensors"):
        os.utime(path, (past, past))
    with DemoServer(sys.executable, lora, tmp_path / "cache") as demo, \
            open_page(browser, demo.url, ".lp-card", "gallery_card_states.png") as page:
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 3")
        states = page.evaluate(STATES)
        assert states["good"] == [False, None, None] and states["far"] == [False, None, None]
        problem, badge, title = states["broken"]
        assert problem and badge == "⚠ broken" and title.startswith("This file cannot be loaded: "), states
        # dot-named and dot-folder files show only for a search of 4+ characters, as in A1111 (an
        # AppleDouble file showed as one more broken card)
        page.locator(".lp-search").fill("retired")
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 1")
        assert list(page.evaluate(STATES)) == ["retired"]
        page.locator(".lp-search").fill("")
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 3")
        media.rename(tmp_path / "unplugged")  # the server's next check rescans; the page redraws
        page.wait_for_function("() => [...document.querySelectorAll('.lp-card .lp-state')].length === 2", timeout=30_000)
        states = page.evaluate(STATES)
        assert states["far"][:2] == [True, "offline"] and "cannot be reached" in states["far"][2]
        assert states["good"] == [False, None, None]
