"""Other tools' sidecars read from disk: Civitai Helper's `<stem>.civitai.info`, Lora-Manager's
`<stem>.metadata.json`, and values in `<stem>.json` that JSON allows but a page cannot carry."""

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
