"""Run by the gradio 3.41.2 interpreter (A1111's pin, no torch): build the card editor's UI as
A1111's create_ui does, then drive its events through gradio's own processing (inputs
preprocessed, outputs postprocessed by each component): open the editor on a card, click a
training tag, save. Prints OK. Usage: ROOT LORA_DIR CACHE_DIR (LORA_DIR holds style.safetensors
with training metadata and style.json; test_editor.py writes them)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

root, lora_dir, cache_dir = (Path(a) for a in sys.argv[1:4])
sys.path.insert(0, str(root))
from tests.extension.glue import load_glue  # noqa: E402

load_glue(root)

import gradio as gr  # noqa: E402
from loraprompt_a1111.editor import LoraPromptMetadataEditor  # noqa: E402
from modules import ui_extra_networks, util  # noqa: E402

from loraprompt.library import Library  # noqa: E402
from loraprompt.library.safetensors_header import decoded_metadata  # noqa: E402

assert gr.__version__ == "3.41.2", gr.__version__


class Lister(util.MassFileLister):
    """A1111's MassFileLister (the stand-in's), recording the files the editor says it wrote."""

    def __init__(self, updated: list[str]) -> None:
        super().__init__()
        self.updated = updated

    def update_file_entry(self, path: str) -> None:
        self.updated.append(path)
        super().update_file_entry(path)


class Page(ui_extra_networks.ExtraNetworksPage):
    """The page's side the editor uses (LoraPromptPage needs torch): its items, runtime and lister."""

    def __init__(self) -> None:
        super().__init__("Lora")
        self.runtime = SimpleNamespace(library=Library([lora_dir], cache_dir=cache_dir))
        self.updated: list[str] = []
        self.lister = Lister(self.updated)
        path = str(lora_dir / "style.safetensors")
        item = {"name": "style", "filename": path, "metadata": decoded_metadata(path), "sd_version": "SD1", "preview": None}
        self.read_user_metadata(item)
        self.items = {"style": item}


page = Page()
with gr.Blocks() as demo:
    editor = LoraPromptMetadataEditor(SimpleNamespace(), "txt2img", page)
    editor.create_ui()
ids = {c.get("props", {}).get("elem_id") for c in demo.get_config_file()["components"]}
assert {"txt2img_lora_edit_user_metadata", "txt2img_lora_edit_user_metadata_name",
        "txt2img_lora_edit_user_metadata_button"} <= ids, ids
labels = [getattr(c, "label", None) for c in editor.viewed_components()]
assert labels == [None, "Description", None, None, "Notes", "Stable Diffusion version", "Training dataset tags",
                  "Activation text", "Preferred weight", "Negative prompt", None, "Random prompt"], labels


def fn_index(trigger: Any, event: str) -> int:
    return next(i for i, d in enumerate(demo.dependencies) if d["targets"] == [(trigger._id, event)] or d["targets"] == [trigger._id])


def run(index: int, inputs: list[Any], event_data: Any = None) -> list[Any]:
    out = asyncio.run(demo.process_api(index, inputs, state={}, event_data=event_data))
    return list(out["data"])


# the edit button: its outputs are the viewed components, filled from the file as it is now
opened = fn_index(editor.button_edit, "click")
assert demo.dependencies[opened]["outputs"] == [c._id for c in editor.viewed_components()]
json_path = lora_dir / "style.json"
json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "notes": "written after listing"}))
values = run(opened, ["style"])
name, desc, table, preview, notes, sd_version, tags, activation, weight, negative, row, random_prompt = values
assert (name, desc, notes, sd_version, activation, negative) == (
    "style", "ink style", "written after listing", "SD1", "ink", ""), values
assert "Output name:" in table and "Dataset size:" in table and "<td>12</td>" in table, table
assert tags["value"] == [("ink", "3"), ("brush", "2"), ("paper", "1")] and tags["visible"] is True, tags
assert weight["value"] == 0.0 and weight["maximum"] == 2, weight  # "abc" in the file: shown as 0 (off)
assert row["visible"] is True and "ink" in random_prompt["value"], (row, random_prompt)

# a click on the tag "brush" adds it to the activation text; a second click removes it
select = fn_index(editor.taginfo, "select")
clicked = gr.SelectData(editor.taginfo, {"index": 1, "value": ["brush", "2"], "selected": True})
assert run(select, ["ink"], event_data=clicked) == ["ink, brush"]
assert run(select, ["ink, brush"], event_data=clicked) == ["ink"]

# Save: the inputs are the card name and the edited components, and only what changed is written
saved = fn_index(editor.button_save, "click")
assert demo.dependencies[saved]["inputs"] == [c._id for c in [editor.edit_name_input, *editor.edited_components()]]
json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "gallery": {"favorite": True}}))
run(saved, ["style", desc, "SDXL", "ink, brush", 0.75, negative, notes])
written = json_path.read_text(encoding="utf-8")
expected = {"description": "ink style", "activation text": "ink, brush", "preferred weight": 0.75, "notes": "written after listing",
            "gallery": {"favorite": True}, "sd version": "SDXL"}
assert json.loads(written) == expected, written
assert written == json.dumps(expected, indent=4, ensure_ascii=False), written
assert page.updated == [str(json_path)], page.updated
assert page.runtime.library.get(page.items["style"]["filename"]).family == "sdxl"  # the library follows
print("OK")
