"""Run by the gradio 3.41.2 interpreter (A1111's pin, no torch): build the glue's tab, render it the
way A1111's create_ui does, mount its routes and fetch cards. Prints OK. Usage: ROOT LORA_DIR CACHE_DIR."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

root, lora_dir, cache_dir = (Path(a) for a in sys.argv[1:4])
sys.path.insert(0, str(root))
from tests.extension.glue import load_glue  # noqa: E402

load_glue(root)

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from loraprompt_a1111.tab import build_tab  # noqa: E402

from loraprompt.library import Library  # noqa: E402

assert gr.__version__ == "3.41.2", gr.__version__
import modules.paths  # noqa: E402

modules.paths.data_path = str(cache_dir)
state = SimpleNamespace(runtime=SimpleNamespace(library=Library([lora_dir], cache_dir=cache_dir)), handles_tags=True, gallery=None)
[(blocks, title, elem_id)] = build_tab(state)
assert (title, elem_id) == ("LoRA", "loraprompt")

with gr.Blocks() as demo, gr.Tabs(elem_id="tabs"), gr.TabItem(title, id=elem_id, elem_id=f"tab_{elem_id}"):
    blocks.render()
config = demo.get_config_file()
ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
assert {"loraprompt_gallery", "loraprompt_notice"} <= ids, ids

app = FastAPI()
state.gallery.mount(app)
client = TestClient(app)
assert client.get("/loraprompt/gallery/static/gallery.js").status_code == 200
cards = client.get("/loraprompt/gallery/cards")
assert cards.status_code == 200, cards.text
assert "style" in cards.text, cards.text[:500]
print("OK")
