"""The cached form of a header's training-metadata summary: compact (a library of 100,000 files
keeps one per file in memory and in its cache file) and read back to exactly the same summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraprompt.library.metadata import MAX_TRIGGERS, MetadataSummary, summarize, tag_frequency

from .conftest import write_lora


def frequency(tags: dict[str, int]) -> str:
    return json.dumps({"10_subject": tags})


CASES = {
    "empty": {},
    "kohya": {"ss_output_name": "cat", "ss_base_model_version": "sd_v1", "ss_network_dim": "16",
              "ss_tag_frequency": frequency({f"tag {i}": 100 - i for i in range(60)})},
    "phrase repeats a tag": {"modelspec.trigger_phrase": "tag 3, wcstyle, tag 3",
                             "ss_tag_frequency": frequency({f"tag {i}": 100 - i for i in range(30)})},
    "phrase only": {"modelspec.trigger_phrase": "a, b", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
    "long phrase": {"modelspec.trigger_phrase": "x" * 1500 + ", y"},  # capped differently from the tags
    "cover": {"ssmd_cover_images": "[\"abc\"]", "ss_tag_frequency": frequency({"one": 1})},
    "long tags": {"ss_tag_frequency": frequency({"x" * 250 + str(i): 9 - i for i in range(9)} | {"y": 1})},  # capped alike
    "ties": {"ss_tag_frequency": frequency({"b": 2, "a": 2, "c": 3})},
}


@pytest.mark.parametrize("metadata", CASES.values(), ids=CASES.keys())
def test_cached_summary_reads_back_the_same(metadata: dict[str, str]) -> None:
    summary = summarize(metadata)
    cached = json.loads(json.dumps(summary.to_cache()))
    assert MetadataSummary.from_json(cached) == summary
    assert MetadataSummary.from_json(summary.to_json()) == summary  # the full form still reads


def test_cached_summary_leaves_out_what_it_can_derive() -> None:
    summary = summarize(CASES["kohya"])
    cached = summary.to_cache()
    assert len(summary.trigger_words) == MAX_TRIGGERS and "trigger_words" not in cached
    assert set(cached) == {"output_name", "base_model_version", "dim", "tags", "metadata_keys"}
    assert len(json.dumps(cached)) < len(json.dumps(summary.to_json())) / 2


def test_a_scanned_entry_equals_the_dataclass_built_one(tmp_path: Path) -> None:
    """A scanned entry holds its values in slots (memory at 100,000 files), with every field set;
    a copy made from them is equal, and the summary computed on first use is not compared."""
    from dataclasses import fields

    from loraprompt.library import Library
    from loraprompt.library.entry import Entry

    write_lora(tmp_path / "Lora" / "a.safetensors", {"ss_output_name": "alias_a", "ss_tag_frequency": frequency({"x": 2})})
    (entry,) = Library(tmp_path / "Lora", tmp_path / "cache").entries
    assert not hasattr(entry, "__dict__")
    values = {f.name: getattr(entry, f.name) for f in fields(Entry) if f.init}
    assert entry.alias == "alias_a" and entry.summary.trigger_words == ("x",)
    assert Entry(**values) == entry and Entry(**values)._memo is None and entry._memo is not None


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"1_x": {"b": 2, "c": 3, "a": 2}}, [("c", 3), ("a", 2), ("b", 2)]),  # ties by name
        ({"1_x": {"b": 2, " b": 1, "": 5, " ": 4, "c": True, "d": 1.5, "e": "3", "f": None}}, [("b", 3)]),  # counted as kohya's
        ({"1_x": {"a": 1, "b": 3}, "2_y": {"a": 4}, "3_z": [1]}, [("a", 5), ("b", 3)]),  # folders summed
        ({"1_x": {"z": 1, "y": 1, "x": 2}}, [("x", 2), ("y", 1), ("z", 1)]),
        ([1], []),
    ],
)
def test_tag_frequency_sums_clean_counts_most_frequent_first(doc: object, expected: list[tuple[str, int]]) -> None:
    assert tag_frequency({"ss_tag_frequency": json.dumps(doc)}) == expected


def test_the_alias_is_ss_output_name_only_as_in_a1111(tmp_path: Path) -> None:
    """A1111's NetworkOnDisk: `alias = metadata.get('ss_output_name', name)`. A `modelspec.title`
    (kohya's svd_merge_lora writes `LoRA@<timestamp>`) is shown as the header's title, never
    inserted, pasted or resolved as the name; a cache of version 5, which took the title, reads
    the files with a title and an output name again once and keeps the others."""
    from loraprompt.library import Library

    lora = tmp_path / "Lora"
    title = {"modelspec.sai_model_spec": "1.0.0", "modelspec.title": "LoRA@1700000000"}
    write_lora(lora / "merged_style.safetensors", title)
    write_lora(lora / "both.safetensors", {**title, "modelspec.title": "Both title", "ss_output_name": "both_out"}, seed=1)
    write_lora(lora / "kohya.safetensors", {"ss_output_name": "kohya_out", "ss_tag_frequency": frequency({"x": 1})}, seed=2)
    lib = Library(lora, tmp_path / "c", workers=0)
    merged, both, kohya = (next(e for e in lib.entries if e.name == n) for n in ("merged_style", "both", "kohya"))
    assert merged.alias == "merged_style" and lib.display_name(merged) == "merged_style" and merged.summary.output_name is None
    assert merged.summary.modelspec["title"] == "LoRA@1700000000"
    assert both.alias == "both_out" and lib.display_name(both) == "both_out" and both.summary.modelspec["title"] == "Both title"
    assert kohya.alias == "kohya_out" and set(lib.aliases()) == {"both_out", "kohya_out"}
    assert lib.resolve("LoRA@1700000000", profile="a1111").entry is None
    # the cache as version 5 wrote it: the title as the output name
    (cache_file,) = (tmp_path / "c").glob("library-*.json")
    doc = json.loads(cache_file.read_text())
    row = doc["files"][str(lora / "merged_style.safetensors")]
    row[7] = "LoRA@1700000000"
    cache_file.write_text(json.dumps({**doc, "version": 5}))
    old = Library(lora, tmp_path / "c", workers=0)
    assert old.last_report.files_read == 2 and [old.display_name(e) for e in old.entries] == ["both_out", "kohya_out", "merged_style"]
    assert Library(lora, tmp_path / "c", workers=0).last_report.files_read == 0
