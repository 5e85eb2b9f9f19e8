"""Chromium: duplicate groups found by the server's background hashing appear in the gallery (a
toolbar button shows only them, badged), and a card whose file name breaks a tag says so and
inserts a form that works. Screenshots in artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import SCREENSHOTS, SD1_KEYS, DemoServer, make_gallery_folder, open_page, write_lora

pytestmark = [pytest.mark.browser]


def test_duplicates_button_and_a_card_whose_name_breaks_a_tag(browser: Any, tmp_path: Path) -> None:
    lora = make_gallery_folder(tmp_path)
    shutil.copy2(lora / "editable.safetensors", lora / "styles" / "editable_copy.safetensors")
    write_lora(lora / "style: ink.safetensors", SD1_KEYS, {}, seed=11)
    past = time.time() - 60
    for path in lora.rglob("*.safetensors"):
        os.utime(path, (past, past))
    with DemoServer(sys.executable, lora, tmp_path / "cache") as demo, \
            open_page(browser, demo.url, ".lp-card", "gallery_duplicates.png") as page:
        button = page.locator(".lp-dup-toggle")
        button.wait_for(state="visible", timeout=60_000)
        assert button.inner_text() == "Duplicates (1)"
        button.click()
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 2")
        assert set(page.locator(".lp-card .lp-name").all_inner_texts()) == {"editable", "editable_copy"}
        badge = page.locator(".lp-card .lp-dup").first
        assert badge.inner_text() == "duplicate" and "same file as:" in str(badge.get_attribute("title"))
        page.locator(".lp-card", has=page.locator(".lp-name", has_text="editable_copy")).locator(".lp-thumb").screenshot(
            path=str(SCREENSHOTS / "gallery_duplicate_card.png"))
        button.click()
        page.wait_for_function("() => document.querySelectorAll('.lp-card').length === 8")
        ink = page.locator(".lp-card", has=page.locator(".lp-name", has_text="style: ink"))
        assert "contains :" in str(ink.locator(".lp-tag-note").get_attribute("title"))
        ink.click()
        page.wait_for_function("() => document.querySelector('#demo_prompt textarea').value.includes('hash=')")
        assert page.locator("#demo_prompt textarea").input_value().startswith("<lora:style_ ink:1:hash=")
        assert "contains :" in page.locator(".lp-status").inner_text()
