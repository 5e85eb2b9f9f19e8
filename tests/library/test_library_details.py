"""The details view: metadata rows in A1111's order, nested JSON expanded, cover image checked."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from loraprompt.errors import AdapterFileError
from loraprompt.library import Library
from loraprompt.library.details import cover_image, metadata_rows
from loraprompt.library.safetensors_header import read_header

from .conftest import kohya_metadata, write_lora

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24


def test_rows_order_and_nested_json() -> None:
    meta = {"zeta": "1", "ss_resolution": "(512, 512)", "ss_sd_model_name": "v1-5",
            "ss_dataset_dirs": json.dumps({"10_cat": {"n_repeats": 10, "img_count": 30}}),
            "modelspec.title": "x" * 5000}
    rows = metadata_rows(meta)
    assert rows[:2] == [("ss_sd_model_name", "v1-5"), ("ss_resolution", "(512, 512)")]
    assert ("ss_dataset_dirs/10_cat/img_count", "30") in rows
    title = dict(rows)["modelspec.title"]
    assert len(title) == 1000 and title.endswith("…")


def test_at_most_max_rows_rows_however_big_the_header() -> None:
    """Robustness item 7 (what is shown is capped): 5000 keys, and one JSON value of 5000 sub-keys,
    give MAX_ROWS rows, A1111's first keys first."""
    from loraprompt.library.details import MAX_ROWS

    many = {f"k{i:05d}": str(i) for i in range(5000)}
    rows = metadata_rows({**many, "ss_sd_model_name": "v1-5"})
    assert len(rows) == MAX_ROWS and rows[0] == ("ss_sd_model_name", "v1-5") and rows[1] == ("k00000", "0")
    nested = metadata_rows({"ss_tag_frequency": json.dumps({"d": {f"t{i}": i for i in range(5000)}}), "z": "last"})
    assert len(nested) == MAX_ROWS and nested[0] == ("ss_tag_frequency/d/t0", "0")
    assert ("z", "last") not in nested  # the rows stop at the limit, the later keys with them


def test_cover_image_decoded_and_checked() -> None:
    good = {"ssmd_cover_images": json.dumps([base64.b64encode(PNG).decode()])}
    assert cover_image(good) == (PNG, "image/png")
    assert cover_image({"ssmd_cover_images": json.dumps(["not base64!!"])}) is None
    html_payload = base64.b64encode(b"<html><script>alert(1)</script>").decode()
    assert cover_image({"ssmd_cover_images": json.dumps([html_payload])}) is None
    assert cover_image({"ssmd_cover_images": "[1, 2"}) is None
    assert cover_image({}) is None


def test_library_details_fresh_from_file(lora_dir: Path, tmp_path: Path) -> None:
    meta = {**kohya_metadata("a"), "ssmd_cover_images": json.dumps([base64.b64encode(PNG).decode()])}
    write_lora(lora_dir / "a.safetensors", meta)
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json}xxxxxx")
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=0)
    a = next(e for e in lib.entries if e.name == "a")
    assert a.summary.has_cover_image
    d = lib.details(a)
    assert d["tensors"] == 3 and d["cover"] == (PNG, "image/png")
    assert ("ss_tag_frequency/10_cat/cat", "30") in d["rows"]
    assert ("ssmd_cover_images", f"{len(meta['ssmd_cover_images'])} characters of embedded images") in d["rows"]
    broken = next(e for e in lib.entries if e.name == "broken")
    assert "not valid JSON" in lib.details(broken)["error"]


def test_display_name_prefers_filename_when_asked(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "file_name.safetensors", kohya_metadata("Alias"))
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    (e,) = lib.entries
    assert lib.display_name(e) == "Alias" and lib.display_name(e, prefer_filename=True) == "file_name"


def test_library_imports_neither_torch_nor_gradio() -> None:
    import subprocess
    import sys

    code = ("import sys, loraprompt; lib = loraprompt.Library; import loraprompt.library.cli, loraprompt.library.cards; "
            "print(sorted(m for m in ('torch', 'gradio', 'safetensors', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_deeply_nested_json_in_a_header_or_sidecar_is_shown_not_a_crash(lora_dir: Path, tmp_path: Path) -> None:
    # json.loads raises RecursionError (not ValueError) past ~1000 levels: one hostile file must not
    # stop the scan of the whole folder, nor the details view
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    write_lora(lora_dir / "deep.safetensors", {"ss_tag_frequency": deep, "ss_dataset_dirs": deep,
                                                "ssmd_cover_images": "[" * 5000 + "]" * 5000})
    write_lora(lora_dir / "ok.safetensors", kohya_metadata("ok"))
    (lora_dir / "ok.json").write_text("[" * 100_000)
    (lora_dir / "ok.metadata.json").write_text(json.dumps({"usage_tips": "[" * 100_000}))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=0)
    entries = {e.name: e for e in lib.entries}
    assert set(entries) == {"deep", "ok"}
    assert entries["deep"].summary.tags == () or entries["deep"].summary.tags == []
    assert entries["ok"].user == {}
    rows = dict(lib.details(entries["deep"])["rows"])
    assert rows["ss_dataset_dirs"].startswith('{"a":{"a":')
    assert lib.details(entries["deep"])["cover"] is None
    header = lora_dir / "nested_header.safetensors"
    text = b'{"__metadata__":' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    header.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(AdapterFileError, match="nested"):
        read_header(header)


def test_a_cover_value_that_is_no_image_is_not_a_cover(lora_dir: Path, tmp_path: Path) -> None:
    """Seen in a real A1111: a card whose header holds `ssmd_cover_images: "not json"` got a thumbnail
    URL that answered 422, so the card showed an empty picture instead of its letter."""
    write_lora(lora_dir / "bad.safetensors", {**kohya_metadata("bad"), "ssmd_cover_images": "not json"})
    write_lora(lora_dir / "html.safetensors", {**kohya_metadata("html"), "ssmd_cover_images": json.dumps(["PGh0bWw+"])})
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=0)
    assert not any(e.summary.has_cover_image for e in lib.entries)


def test_the_scan_s_cover_check_agrees_with_the_decoded_cover() -> None:
    """The scan tells whether a header has a cover from the first base64 characters only (it decoded
    megabytes per file); on every kind of cover value its verdict is the full decode's."""
    from loraprompt.library.details import MAX_COVER_BYTES
    from loraprompt.library.metadata import summarize

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    images = [PNG, b"\xff\xd8\xff\xe0" + b"\0" * 40, b"GIF89a" + b"\0" * 30, b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20,
              b"\x89PNG", b"<html><script>alert(1)</script>", b"GIF87"]
    values = [json.dumps([b64(data)]) for data in images]
    values += [json.dumps(["data:image/png;base64," + b64(PNG)]), json.dumps(["data:image/png;base64,!!" + b64(PNG)]),
               json.dumps([b64(PNG)[:-1]]), json.dumps(["not base64!!"]), json.dumps([" " + b64(PNG)]), json.dumps([b64(PNG), 1]),
               json.dumps([]), json.dumps([1]), json.dumps({"a": b64(PNG)}), "[1, 2", "not json", "", json.dumps([""]),
               json.dumps([b64(PNG) + "A" * (MAX_COVER_BYTES * 4 // 3)])]
    verdicts = [(summarize({"ssmd_cover_images": v}).has_cover_image, cover_image({"ssmd_cover_images": v}) is not None)
                for v in values]
    assert [scan for scan, _ in verdicts] == [full for _, full in verdicts]
    assert sum(full for _, full in verdicts) == 6  # 4 kinds, a data: URL, a list with more after the image
