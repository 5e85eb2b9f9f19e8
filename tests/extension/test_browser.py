"""The extension's page-side pieces in a real Chromium: A1111's start-up order builds the LoRA tab
and mounts its routes on a real FastAPI app; javascript/loraprompt.js (loaded as A1111 loads an
extension's scripts, run on onUiLoaded) brings in the gallery, and a card click writes the tag into
the textarea inside A1111's `#txt2img_prompt`."""

from __future__ import annotations

import importlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.browser import ServerProcess, gradio_pythons
from tests.fixtures.ports import free_port

from .conftest import ROOT, Webui
from .test_generation import started

SCRIPT_URL = "/file=extensions/loraprompt/javascript/loraprompt.js"
# What A1111's page provides: onUiLoaded (script.js) and the prompt box by elem_id.
PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script>var lpCallbacks = []; function onUiLoaded(cb) { lpCallbacks.push(cb); }
document.addEventListener("DOMContentLoaded", function () { lpCallbacks.forEach(function (cb) { cb(); }); });</script>
<script src="SCRIPT"></script></head>
<body><div id="txt2img_prompt"><label><textarea>a cat</textarea></label></div>
<div id="txt2img_neg_prompt"><label><textarea></textarea></label></div>GALLERY</body></html>"""


@pytest.fixture
def served(webui: Webui) -> Iterator[str]:
    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    started(webui)
    callbacks = importlib.import_module("modules.script_callbacks")
    [(blocks, _, _)] = callbacks.ui_tabs_callback()
    app = fastapi.FastAPI()
    callbacks.app_started_callback(blocks, app)
    gallery_html = webui.state.gallery.html.value
    page = PAGE.replace("SCRIPT", SCRIPT_URL).replace("GALLERY", gallery_html)
    app.get("/")(lambda: fastapi.responses.HTMLResponse(page))
    app.get(SCRIPT_URL)(lambda: fastapi.responses.FileResponse(ROOT / "javascript" / "loraprompt.js"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.browser
def test_card_click_writes_the_tag_into_a1111s_prompt_box(served: str, browser: Any) -> None:
    with urllib.request.urlopen(served + "/sdapi/v1/loras") as response:
        assert sorted(x["name"] for x in json.load(response)) == ["detail", "style"]
    page = browser.new_page()
    try:
        page.goto(served)
        card = page.locator(".lp-card", has_text="style").first
        card.wait_for(timeout=30_000)
        card.click()
        page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('<lora:style:')")
        assert page.locator("#txt2img_prompt textarea").input_value().startswith("a cat")
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.parametrize("python", gradio_pythons())
def test_tab_notice_renders_tags_and_arguments_as_written(python: str, browser: Any, tmp_path: Path) -> None:
    """Issue 15 bug 3: gradio's Markdown made `unet=0@0,1@0.5` a mailto: link of `1@0.5`. Every tag
    and tag argument of the notice is a code span, shown exactly as the user types it."""
    with ServerProcess(tmp_path / "notice.log") as server:
        server.start([python, str(ROOT / "tests" / "extension" / "notice_page.py"), str(ROOT), str(server.port)], "", 90.0)
        page = browser.new_page()
        try:
            page.goto(server.url)
            notices = page.locator(".lp-notice p")
            notices.nth(3).wait_for(timeout=30_000)
            texts = notices.all_inner_texts()
            assert page.locator(".lp-notice a, .lp-notice strong, .lp-notice em").count() == 0
            codes = page.locator(".lp-notice code").all_inner_texts()
        finally:
            page.close()
    assert "unet=0@0,1@0.5" in codes and "sched=" in codes and "<lora:...>" in codes
    assert any("(sched=, unet=0@0,1@0.5, lbw=, start=, stop=, hr=)" in t for t in texts), texts
