"""The card editor's values (extension/user_metadata.py): what it shows, what counts as edited,
and what it reads from untrusted header metadata."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from loraprompt.library.metadata import MAX_SHOWN

from .conftest import ROOT

# a module of its own (no relative imports), loaded by path: `extension` is not a package on sys.path
_spec = importlib.util.spec_from_file_location("loraprompt_user_metadata", ROOT / "extension" / "user_metadata.py")
assert _spec is not None and _spec.loader is not None
_um = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_um)
dataset_tags, edited, header_rows, random_prompt = _um.dataset_tags, _um.edited, _um.header_rows, _um.random_prompt
shown_values, submitted_values, toggle_tag = _um.shown_values, _um.submitted_values, _um.toggle_tag

def test_shown_values_of_a_file_with_odd_values() -> None:
    shown = shown_values({"activation text": None, "notes": 5, "sd version": "SD3", "preferred weight": float("nan")}, "SDXL")
    assert shown == {"description": "", "activation text": "", "negative text": "", "notes": "5", "sd version": "SDXL",
                     "preferred weight": 0.0}
    assert shown_values({"sd version": "Unknown"}, "SD1")["sd version"] == "Unknown"  # A1111's choice, kept
    assert shown_values({}, "sd1")["sd version"] == "Unknown"


def test_edited_keeps_what_was_not_changed_and_the_slider_rounding() -> None:
    shown = shown_values({"preferred weight": 0.123, "notes": "n"}, "SD1")
    same = submitted_values(("", "SD1", "", 0.12, "", "n"))  # the slider rounds to its 0.01 step
    assert edited(shown, same) == {}
    assert edited(shown, submitted_values(("", "SD1", "x", 0.13, "", "n"))) == {"activation text": "x", "preferred weight": 0.13}
    assert edited(None, same) == same
    with pytest.raises(ValueError, match="finite"):
        submitted_values(("", "SD1", "", float("inf"), "", ""))


def test_dataset_tags_by_count_and_by_word_for_sentence_captions() -> None:
    assert dataset_tags({"ss_tag_frequency": {"a": {" ink ": 2, "brush": "5", "bad": "x"}, "b": {"ink": 4}}}) == [
        ("ink", 6), ("brush", 5)]
    sentences = {"ss_tag_frequency": {"a": {"a drawing of a cat in ink": 2, "a photo of a cat": 1}}}
    assert dataset_tags(sentences)[:2] == [("cat", 3), ("drawing", 2)]
    for garbage in ({"ss_tag_frequency": "x"}, {"ss_tag_frequency": {"a": [1]}}, {}):
        assert dataset_tags(garbage) == []


def test_random_prompt_keeps_the_most_frequent_tag_and_escapes_brackets() -> None:
    tags = [("(ink)", 10), ("brush", 1)]
    assert random_prompt(tags, random.Random(0)).startswith("\\(ink\\)")
    assert random_prompt([]) == ""


def test_toggle_tag() -> None:
    assert toggle_tag("", "ink") == "ink"
    assert toggle_tag("ink", "brush") == "ink, brush"
    assert toggle_tag("ink , brush", "ink") == "brush"


def test_header_rows_leave_out_malformed_values() -> None:
    rows = header_rows({"ss_output_name": "<x>", "ss_clip_skip": "None", "ss_training_started_at": "soon",
                        "ss_bucket_info": {"buckets": {"0": {"resolution": [1], "count": 1},
                                                       **{str(i): {"resolution": [512, 512 + i], "count": i} for i in range(1, 6)}}},
                        "ss_dataset_dirs": {"a": {"img_count": "3"}, "b": "x", "c": {"img_count": None}}})
    assert rows[0] == ("Output name:", "&lt;x&gt;")
    assert rows[1][0] == "Resolutions:" and rows[1][1].startswith("<span title='") and "517x512, 516x512" in rows[1][1]
    assert rows[2] == ("Dataset size:", "3")
    assert header_rows(json.loads('{"ss_bucket_info": null, "ss_dataset_dirs": []}')) == []


def test_header_rows_cap_what_they_show() -> None:
    """Robustness item 7: a header value of any size is shown capped (escaped, then still short)."""
    buckets = {str(i): {"resolution": [512, 512 + i], "count": 1 + i % 3} for i in range(5000)}
    rows = dict(header_rows({"ss_output_name": "<" * 100_000, "ss_sd_model_name": "m" * 2_000_000,
                             "ss_bucket_info": {"buckets": buckets}}))
    assert rows["Output name:"].startswith("&lt;&lt;") and rows["Output name:"].endswith("…")
    assert rows["Model:"] == "m" * (MAX_SHOWN - 1) + "…"
    assert all(len(value) <= 5 * MAX_SHOWN + 100 for value in rows.values()), [len(v) for v in rows.values()]
    assert rows["Resolutions:"].startswith("<span title='") and rows["Resolutions:"].count("<span") == 1


def test_dataset_tags_leave_out_what_no_caption_tag_is() -> None:
    """Robustness item 7: a header's tag of a million characters is no button in the editor (it would
    be drawn whole and pasted whole into the activation text); the real tags beside it stay."""
    huge = "x" * 1_000_000
    assert dataset_tags({"ss_tag_frequency": {"a": {huge: 9, "ink": 2, "y" * MAX_SHOWN: 1}}}) == [("ink", 2),
                                                                                                  ("y" * MAX_SHOWN, 1)]
    sentences = {"ss_tag_frequency": {"a": {f"a cat drawn {huge} in ink today": 2}}}
    assert dataset_tags(sentences) == [("cat", 2), ("drawn", 2), ("ink", 2), ("today", 2)]
