"""Card data and the details table from a real library over real files: values, caps and escaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraprompt.library import Library
from loraprompt.ui import cards

from .conftest import XSS


@pytest.fixture
def library(gallery_folder: Path, tmp_path: Path) -> Library:
    return Library(gallery_folder, tmp_path / "cache", persist=False)


def by_name(library: Library) -> dict[str, cards.Entry]:
    return {e.name: e for e in library.entries}


def test_card_record_carries_what_the_card_shows(library: Library) -> None:
    entry = by_name(library)["catgirl"]
    record = cards.card_record(entry, "0/characters/catgirl.safetensors", "thumb?id=x", "catgirl")
    assert record["name"] == "catgirl" and record["alias"] == "catgirl_v2"
    assert record["folder"] == "characters"
    assert record["family"] == "sd1" and record["badge"] == "SD1"
    assert record["family_title"] == "SD1 (set in catgirl.json)"
    assert record["weight"] == 0.7  # the sidecar's preferred weight
    assert record["triggers"][:2] == ["catgirl", "cat ears"]  # activation text first, then header tags
    assert "orange cat" in record["triggers"]
    assert "great with sunsets" in record["search"]  # notes are searchable
    assert record["thumb"] == "thumb?id=x"


def test_family_title_names_its_source(library: Library) -> None:
    entries = by_name(library)
    assert cards.family_title(entries["watercolor"]) == "SDXL (from the tensor shapes)"
    assert cards.card_record(entries["editable"], "e", None, "editable")["weight"] == 1.0


def test_card_ids_are_root_index_and_relative_path(library: Library, gallery_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "Other"
    other.mkdir()
    (other / "editable.safetensors").write_bytes((gallery_folder / "editable.safetensors").read_bytes())
    lib = Library([gallery_folder, other], tmp_path / "cache2", persist=False)
    ids = cards.card_ids(lib.entries, [str(r) for r in lib.roots])
    assert "0/characters/catgirl.safetensors" in ids
    assert {"0/editable.safetensors", "1/editable.safetensors"} <= set(ids)
    assert ids["1/editable.safetensors"].root == str(other)


def test_details_html_escapes_every_field(library: Library) -> None:
    entry = by_name(library)[XSS]
    page = cards.details_html(entry, {"sha256": "ab" * 32})
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert page.count('"') == 2 * page.count("class=")  # no quote from the data reaches the markup
    assert "&quot;&#x27;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<tr>") == len(cards.details_rows(entry, {"sha256": "ab" * 32}))


def test_details_rows_show_user_json_first_then_header(library: Library) -> None:
    rows = cards.details_rows(by_name(library)["catgirl"], {"tensor_sha256": "cd" * 32})
    labels = [label for label, _, _ in rows]
    assert labels.index("Activation text") < labels.index("Network dim")
    sources = {label: source for label, _, source in rows}
    assert sources["Notes"] == "catgirl.json" and sources["Network dim"] == "header"
    assert ("Tensor hash (A1111, AutoV3)", "cd" * 32, None) in rows
    assert ("Alias", "catgirl_v2", "ss_output_name") in rows


def test_details_caps_long_values(library: Library, gallery_folder: Path) -> None:
    sidecar = gallery_folder / "editable.json"
    sidecar.write_text(json.dumps({"notes": "n" * 50_000}), encoding="utf-8")
    entry = Library(gallery_folder, persist=False).entries
    notes = next(e for e in entry if e.name == "editable")
    page = cards.details_html(notes, {})
    assert "n" * cards.MAX_DETAIL_TEXT not in page and "n" * (cards.MAX_DETAIL_TEXT - 1) in page


def test_user_values_keep_only_editor_keys(library: Library) -> None:
    values = cards.user_values(by_name(library)["catgirl"])
    assert values["preferred weight"] == 0.7 and "modelId" not in values


def test_card_search_text_is_lowercased_as_the_page_lowercases_what_is_typed(gallery_folder: Path, tmp_path: Path) -> None:
    # gallery.js matches `typed.toLowerCase()` inside the record's text: Python's casefold() turns
    # "ß" into "ss", which toLowerCase() never does, so "Straße" could not be found by its own name
    (gallery_folder / "editable.json").write_text(json.dumps({"notes": "Straße ΣΊΣΥΦΟΣ"}), encoding="utf-8")
    entry = next(e for e in Library(gallery_folder, tmp_path / "c", persist=False).entries if e.name == "editable")
    search = cards.card_record(entry, "e", None, "editable")["search"]
    assert "straße σίσυφος" in search  # what "Straße ΣΊΣΥΦΟΣ".toLowerCase() gives in a browser
