"""Other tools' sidecars read from disk: Civitai Helper's `<stem>.civitai.info`, Civitai Browser+'s
`<stem>.api_info.json`, Lora-Manager's `<stem>.metadata.json`, and values in `<stem>.json` that
JSON allows but a page cannot carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraprompt.library import Library

from .conftest import write_lora


def civitai_entry(tmp_path: Path, info: dict[str, Any]) -> Any:
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors")
    (root / "a.civitai.info").write_text(json.dumps(info), encoding="utf-8")
    (entry,) = Library([root], cache_dir=tmp_path / "c").entries
    return entry


@pytest.mark.parametrize(
    ("model", "image", "nsfw"),
    [
        ({"nsfw": False}, {"nsfw": "None"}, False),  # the API's string for a safe image (bool("None") is True)
        ({"nsfw": False}, {"nsfw": ""}, False),
        ({"nsfw": False}, {"nsfw": "Soft"}, True),
        ({"nsfw": False}, {"nsfw": "X"}, True),
        ({"nsfw": False}, {"nsfw": True}, True),
        ({"nsfw": True}, {"nsfw": "None"}, True),
        ({}, {"nsfwLevel": 1}, False),  # PG
        ({}, {"nsfwLevel": 2}, False),  # PG-13: Lora-Manager's default blurs from R
        ({}, {"nsfwLevel": 4}, True),  # R
        ({}, {"nsfwLevel": 16}, True),  # XXX, with no `nsfw` key at all (newer API answers)
        ({}, {"nsfwLevel": "16"}, False),  # not a level
        ({}, {"nsfw": None, "nsfwLevel": None}, False),
    ],
)
def test_civitai_nsfw_flag(tmp_path: Path, model: dict[str, Any], image: dict[str, Any], nsfw: bool) -> None:
    info = {"id": 1, "modelId": 2, "name": "v1", "model": {"name": "Cute", **model},
            "images": [{"url": "https://image.civitai.com/x/1.jpeg", **image}]}
    entry = civitai_entry(tmp_path, info)
    assert entry.imports["civitai"]["nsfw"] is nsfw and entry.nsfw is nsfw


def test_numbers_out_of_float_range_in_user_json_read_as_null(tmp_path: Path) -> None:
    """`1e999` is valid JSON that Python reads as inf (parse_constant sees only the NaN/Infinity
    literals); it reads as null like them, so the entry, its card and details stay serialisable."""
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors")
    (root / "a.json").write_text('{"preferred weight": 1e999, "notes": "x", "other": [-1e999, 0.5]}')
    (entry,) = Library([root], cache_dir=tmp_path / "c").entries
    assert entry.user == {"preferred weight": None, "notes": "x", "other": [None, 0.5]}
    assert entry.preferred_weight is None
    json.dumps(entry.user, allow_nan=False)


def test_nulls_in_civitai_and_lora_manager_sidecars_are_empty_not_none(tmp_path: Path) -> None:
    """JSON null is "", not the text "None": the base model then comes from the header."""
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors", {"ss_base_model_version": "sdxl_base_v1-0"})
    (root / "a.civitai.info").write_text(json.dumps({
        "id": 1, "modelId": 2, "name": None, "baseModel": None, "trainedWords": None, "model": {"name": None},
        "description": None}))
    write_lora(root / "b.safetensors", {"ss_base_model_version": "sd_v1"})
    (root / "b.metadata.json").write_text(json.dumps({
        "sha256": None, "base_model": None, "tags": None, "notes": None, "civitai": None}))
    write_lora(root / "c.safetensors")
    (root / "c.civitai.info").write_text(json.dumps({"id": 3, "name": False, "baseModel": {"x": 1}, "model": {"name": 7}}))
    a, b, c = sorted(Library([root], cache_dir=tmp_path / "c").entries, key=lambda e: e.name)
    assert a.imports["civitai"] | {"id": 0} == {"id": 0, "model_id": 2, "name": "", "model_name": "", "base_model": "",
                                               "trained_words": [], "nsfw": False, "description": ""}
    assert a.base_model == "sdxl_base_v1-0"
    assert b.imports["lora_manager"]["sha256"] == "" and b.imports["lora_manager"]["base_model"] == ""
    assert b.imports["lora_manager"]["notes"] == "" and b.base_model == "sd_v1"
    assert (c.imports["civitai"]["name"], c.imports["civitai"]["base_model"], c.imports["civitai"]["model_name"]) == ("", "", "7")


def _model_json(*versions: dict[str, Any]) -> dict[str, Any]:
    """Civitai's model JSON (`/api/v1/models/{id}`) as Civitai Browser+ saves it beside the file."""
    return {"id": 4201, "name": "Ink Style", "type": "LORA", "nsfw": False, "tags": ["style", "ink", {"name": "art"}],
            "description": "<p>An ink style.</p>", "creator": {"username": "someone"}, "modelVersions": list(versions)}


def _version(vid: int, base: str, words: list[str], file_name: str, file_id: int = 1) -> dict[str, Any]:
    return {"id": vid, "name": f"v{vid}", "baseModel": base, "trainedWords": words, "description": f"version {vid}",
            "files": [{"id": file_id, "name": file_name, "hashes": {"SHA256": "AB" * 32}}],
            "images": [{"url": "https://image.civitai.com/x/1.jpeg", "nsfwLevel": 1}]}


def test_civitai_browser_plus_api_info_is_read(tmp_path: Path) -> None:
    """Civitai Browser+ saves Civitai's model JSON as `<stem>.api_info.json` (spec/gallery.md
    lists it; it was never read): the version whose files include this file (a name Browser+
    suffixed with `_<file id>` too) gives the trained words and base model, the model its tags,
    description and NSFW flag; each shown with its source, searchable, under `.civitai.info`'s."""
    root = tmp_path / "Lora"
    two = _model_json(_version(11, "SD 1.5", ["inky"], "ink_v1.safetensors"),
                      _version(12, "SDXL 1.0", ["inkxl", "brush"], "ink_xl.safetensors", file_id=77))
    for stem in ("ink_v1", "ink_xl_77", "other"):
        write_lora(root / f"{stem}.safetensors")
        (root / f"{stem}.api_info.json").write_text(json.dumps(two), encoding="utf-8")
    write_lora(root / "only.safetensors")  # one version: it, whatever the file is called now
    (root / "only.api_info.json").write_text(json.dumps({**_model_json(_version(13, "Pony", ["p"], "x.safetensors")),
                                                        "nsfw": True}))
    write_lora(root / "old.safetensors")  # older Browser+ releases saved the version's JSON itself
    (root / "old.api_info.json").write_text(json.dumps({**_version(14, "Flux.1 D", ["f"], "old.safetensors"), "modelId": 9}))
    write_lora(root / "both.safetensors")
    (root / "both.api_info.json").write_text(json.dumps(_model_json(_version(15, "SD 1.5", ["b1"], "both.safetensors"))))
    (root / "both.civitai.info").write_text(json.dumps({"id": 15, "baseModel": "Illustrious", "trainedWords": ["b2"]}))
    entries = {e.name: e for e in Library([root], cache_dir=tmp_path / "c").entries}
    v1, xl, other = entries["ink_v1"], entries["ink_xl_77"], entries["other"]
    assert (v1.imports["api_info"]["id"], v1.base_model, v1.trigger_words()) == (11, "SD 1.5", [("inky", "api_info")])
    assert (xl.imports["api_info"]["id"], xl.base_model, [w for w, _ in xl.trigger_words()]) == (12, "SDXL 1.0", ["inkxl", "brush"])
    assert v1.imports["api_info"] | {"id": 0} == {
        "id": 0, "model_id": 4201, "name": "v11", "model_name": "Ink Style", "base_model": "SD 1.5",
        "trained_words": ["inky"], "nsfw": False, "description": "<p>An ink style.</p>", "tags": ["style", "ink", "art"]}
    # two versions and none lists this file: the model's own values only, never a guessed version's
    assert other.imports["api_info"] == {"model_id": 4201, "model_name": "Ink Style", "tags": ["style", "ink", "art"],
                                         "nsfw": False, "description": "<p>An ink style.</p>"}
    assert other.trigger_words() == [] and other.base_model is None
    assert entries["only"].base_model == "Pony" and entries["only"].nsfw
    assert entries["old"].imports["api_info"]["model_id"] == 9 and entries["old"].base_model == "Flux.1 D"
    both = entries["both"]
    assert both.base_model == "Illustrious" and [w for w, _ in both.trigger_words()] == ["b2", "b1"]
    assert "ink" in v1.search_text.split("\n")
