"""The card editor of loraprompt's Lora cards page (extension/editor.py): A1111 gives it to the
page's edit button, it shows the built-in Lora editor's fields, and Save changes only the edited
keys of `<stem>.json` as it is on disk then. Its gradio 3.41.2 layout and events run in
gradio3_editor.py, in A1111's gradio."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from .conftest import Webui, on_gradio3, run_on_gradio3
from .test_generation import started

A1111_KEYS = ["description", "sd version", "activation text", "preferred weight", "negative text", "notes"]
TRAINING = {
    "ss_network_module": "networks.lora", "ss_output_name": "style", "ss_clip_skip": "2",
    "ss_sd_model_name": "<v1-5>.ckpt",
    "ss_tag_frequency": json.dumps({"10_style": {"ink": 3, "brush": 2, "paper": 1}}),
    "ss_dataset_dirs": json.dumps({"10_style": {"n_repeats": 10, "img_count": 12}}),
    "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 768], "count": 12}}}),
    "ss_training_started_at": "1700000000",
}


class Lister:
    """The page's MassFileLister (the stand-in's), recording what the editor updates."""

    def __init__(self) -> None:
        self.updated: list[str] = []
        self.inner = importlib.import_module("modules.util").MassFileLister()

    def update_file_entry(self, path: str) -> None:
        self.updated.append(path)
        self.inner.update_file_entry(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def cards_page(webui: Webui, sidecar: dict[str, Any] | str | None = None) -> Any:
    """The started extension's cards page, its items listed as A1111's create_html lists them."""
    started(webui)
    webui.write_lora("style", seed=1, metadata=TRAINING)  # over started()'s, which has no training metadata
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        (webui.lora_dir / "style.json").write_text(text, encoding="utf-8")
    webui.state.runtime.refresh()
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    page.items = {i["name"]: i for i in page.list_items()}
    page.lister = Lister()
    return page


def editor_of(page: Any) -> Any:
    return page.create_user_metadata_editor(SimpleNamespace(), "txt2img")


def read(webui: Webui) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((webui.lora_dir / "style.json").read_text(encoding="utf-8"))
    return doc


def test_the_cards_page_gives_the_lora_editor_not_a1111s_generic_one(webui: Webui) -> None:
    page = cards_page(webui)
    base = importlib.import_module("modules.ui_extra_networks_user_metadata").UserMetadataEditor
    editor_class = importlib.import_module("loraprompt_a1111.editor").LoraPromptMetadataEditor
    # what A1111 gives a page that has no editor of its own: description and notes only
    assert type(importlib.import_module("modules.ui_extra_networks").ExtraNetworksPage.create_user_metadata_editor(
        page, SimpleNamespace(), "txt2img")) is base
    editor = editor_of(page)
    assert type(editor) is editor_class and isinstance(editor, base)
    assert (editor.page, editor.tabname, editor.id_part) == (page, "txt2img", "txt2img_lora_edit_user_metadata")


def test_opening_shows_the_file_as_it_is_now_in_the_outputs_order(webui: Webui) -> None:
    page = cards_page(webui, {"description": "ink style", "activation text": "ink", "preferred weight": 0.6})
    (webui.lora_dir / "style.json").write_text(json.dumps({  # written by another tool after the page was listed
        "description": "ink style", "activation text": "ink, brush", "preferred weight": 3.5, "negative text": "blur",
        "sd version": "SDXL", "notes": "gallery note"}))
    values = editor_of(page).put_values_into_components("style")
    assert len(values) == 12
    name, desc, table, _preview, notes, sd_version, tags, activation, weight, negative, row, random_prompt = values
    assert (name, desc, notes, sd_version, activation, negative) == ("style", "ink style", "gallery note", "SDXL",
                                                                       "ink, brush", "blur")
    assert tags["value"] == [("ink", "3"), ("brush", "2"), ("paper", "1")] and tags["visible"] is True
    assert (weight["value"], weight["minimum"], weight["maximum"]) == (3.5, 0.0, 3.5)  # widened, not clamped to 2
    assert row["visible"] is True and "ink" in random_prompt["value"].split(", ")
    for row_html in ("<th>Output name:</th><td>style</td>", "<th>Model:</th><td>&lt;v1-5&gt;.ckpt</td>", "<th>Clip skip:</th><td>2</td>",
                     "<th>Kohya module:</th><td>networks.lora</td>", "<th>Date trained:</th><td>2023-11-14 22:13</td>",
                     "<th>Resolution:</th><td>768x512</td>", "<th>Dataset size:</th><td>12</td>"):
        assert row_html in table


def test_a_card_without_a_json_shows_its_txt_description_and_the_detected_version(webui: Webui) -> None:
    page = cards_page(webui)
    (webui.lora_dir / "style.txt").write_text("from the txt file")
    values = editor_of(page).put_values_into_components("style")
    assert (values[1], values[5], values[7], values[8]["value"], values[9]) == ("from the txt file", "SD1", "", 0.0, "")


@pytest.mark.parametrize(("bad", "kept"), [('"abc"', "abc"), ("true", True), ("null", None), ("[1]", [1]),
                                           ("NaN", None), ("Infinity", None)])  # not JSON: read (and kept) as null
def test_a_bad_preferred_weight_in_the_file_is_shown_as_off_and_kept_unless_edited(webui: Webui, bad: str, kept: Any) -> None:
    page = cards_page(webui, f'{{"preferred weight": {bad}, "activation text": "ink"}}')
    editor = editor_of(page)
    values = editor.put_values_into_components("style")
    assert values[8]["value"] == 0.0
    editor.save_lora_user_metadata("style", values[1], values[5], "ink, brush", 0.0, values[9], values[4])
    assert read(webui) == {"preferred weight": kept, "activation text": "ink, brush"}
    assert page.create_item("style")["prompt"] == '"<lora:style:" + opts.extra_networks_default_multiplier + ">" + " ink, brush"'


def test_save_changes_only_the_edited_keys_of_the_file_as_it_is_now(webui: Webui) -> None:
    page = cards_page(webui, {"description": "ink style", "activation text": "ink", "preferred weight": 0.6,
                              "notes": "mine", "civitai": {"id": 7}})
    editor = editor_of(page)
    # listed, then the gallery writes a note and a flag: the editor shows the file as it is now
    (webui.lora_dir / "style.json").write_text(json.dumps({**read(webui), "notes": "gallery note", "favorite": True}))
    values = editor.put_values_into_components("style")
    assert values[4] == "gallery note"
    # while the editor is open, another tool sets a negative prompt and a key of its own
    (webui.lora_dir / "style.json").write_text(json.dumps({**read(webui), "negative text": "blur", "tool": [1, 2]}))
    editor.save_lora_user_metadata("style", values[1], "SDXL", "ink, \u58a8", 0.8, values[9], values[4])
    expected = {"description": "ink style", "activation text": "ink, \u58a8", "preferred weight": 0.8, "notes": "gallery note",
                "civitai": {"id": 7}, "favorite": True, "negative text": "blur", "tool": [1, 2], "sd version": "SDXL"}
    # A1111's format: indent 4, UTF-8 text unescaped
    assert (webui.lora_dir / "style.json").read_text(encoding="utf-8") == json.dumps(expected, indent=4, ensure_ascii=False)
    assert page.lister.updated == [str(webui.lora_dir / "style.json")]
    # the card refreshed after Save (A1111's extraNetworksRefreshSingleCard) inserts the new weight and text
    item = page.create_item("style")
    assert item["prompt"] == '"<lora:style:" + 0.8 + ">" + " ink, \u58a8"'
    assert item["negative_prompt"] == '"(blur:1)"'
    assert item["sd_version"] == "SDXL"  # the library's entry follows the saved file


def test_save_of_a_card_not_opened_writes_every_key_a1111_writes(webui: Webui) -> None:
    page = cards_page(webui, {"loraprompt": {"x": 1}})
    editor_of(page).save_lora_user_metadata("style", "d", "SD2", "ink", 1.25, "blur", "n")
    saved = read(webui)
    assert list(saved) == ["loraprompt", *A1111_KEYS]
    assert [saved[k] for k in A1111_KEYS] == ["d", "SD2", "ink", 1.25, "blur", "n"]


def test_save_refuses_a_file_that_is_not_a_json_object_and_leaves_it(webui: Webui) -> None:
    import gradio as gr

    page = cards_page(webui, {"description": "d"})
    editor = editor_of(page)
    values = editor.put_values_into_components("style")
    (webui.lora_dir / "style.json").write_text("[1, 2]")  # e.g. another tool's file of the same name
    with pytest.raises(gr.Error, match="not a JSON object"):
        editor.save_lora_user_metadata("style", "new", values[5], "ink", 0.0, "", "")
    assert (webui.lora_dir / "style.json").read_text() == "[1, 2]"
    assert page.lister.updated == []


@on_gradio3
def test_editor_builds_and_its_events_run_on_gradio_3_41_2(tmp_path: Path) -> None:
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 1)},
              str(lora_dir / "style.safetensors"), metadata={**TRAINING, "ss_base_model_version": "sd_v1"})
    (lora_dir / "style.json").write_text(json.dumps({"description": "ink style", "activation text": "ink",
                                                     "preferred weight": "abc"}))
    run_on_gradio3("gradio3_editor.py", lora_dir, tmp_path / "cache")
