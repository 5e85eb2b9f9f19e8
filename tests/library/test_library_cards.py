"""Card data, escaping, search/filter/sort, folder tree, and the `scan` command."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from loraprompt.cli import main
from loraprompt.library import Library
from loraprompt.library.cards import card, escape_html, folder_tree, json_for_script, search

from .conftest import SD1_KEYS, SDXL_KEYS, kohya_metadata, write_lora

XSS = "\"'><img src=x onerror=alert(1)>\nline2"


@pytest.fixture
def lib(lora_dir: Path, tmp_path: Path) -> Library:
    write_lora(lora_dir / "chars" / "hero.safetensors", kohya_metadata("hero", tags={"x": {"sword": 5}}), keys=SD1_KEYS)
    write_lora(lora_dir / "chars" / "villains" / "boss2.safetensors", kohya_metadata("boss2"), keys=SDXL_KEYS)
    write_lora(lora_dir / "chars" / "villains" / "boss10.safetensors", kohya_metadata("boss10"), keys=SDXL_KEYS)
    write_lora(lora_dir / "styles" / "ink.safetensors", {}, keys={"x": (2, 2)})
    write_lora(lora_dir / ".secret" / "hidden_one.safetensors", {})
    big = write_lora(lora_dir / "zz_big.safetensors", {}, keys={**SD1_KEYS, "y": (256, 256)})
    os.utime(big, ns=(1, time.time_ns() + 86_400 * 10**9))
    (lora_dir / "styles" / "ink.json").write_text(json.dumps({"notes": "moody watercolour", "favorite": True}))
    return Library([lora_dir], cache_dir=tmp_path / "c")


def test_escape_html_neutralises_markup() -> None:
    out = escape_html(XSS)
    assert "<" not in out and ">" not in out and '"' not in out and "'" not in out and "\n" not in out
    assert out.startswith("&quot;&#x27;&gt;&lt;img")
    script = json_for_script({"name": XSS, "x": "</script><script>alert(1)</script>"})
    assert "<" not in script and ">" not in script and "'" not in script
    assert json.loads(script) == {"name": XSS, "x": "</script><script>alert(1)</script>"}


def test_json_for_script_escapes_html_and_round_trips() -> None:
    value = {"name": XSS + "\u2028&", "n": [1.5]}
    text = json_for_script(value)
    for bad in ("<", ">", "&", "'", "\u2028"):
        assert bad not in text
    assert json.loads(text) == value


def test_json_for_script_escapes_lone_surrogates_so_the_text_is_utf8() -> None:
    """os.fsdecode of a Latin-1 or Shift-JIS file name gives lone surrogates: escaped, the JSON
    encodes as UTF-8 and reads back the same name (a high surrogate alone too)."""
    value = {"name": "caf\udce9", "path": "\ud800x/ねこ"}
    text = json_for_script(value)
    text.encode("utf-8")
    assert "\\udce9" in text and "ねこ" in text and json.loads(text) == value


def test_json_for_script_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        json_for_script({"x": float("nan")})


def test_card_values_from_hostile_metadata(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "evil.safetensors", {"ss_output_name": XSS, "ss_tag_frequency": json.dumps({"a": {XSS: 3}})})
    (lora_dir / "evil.txt").write_text(XSS)
    library = Library([lora_dir], cache_dir=tmp_path / "c")
    (entry,) = library.entries
    data = card(library, entry)
    assert data["alias"] == XSS and data["description"] == XSS and [XSS, "header"] in data["trigger_words"]
    rendered = "".join(escape_html(v) for v in (data["alias"], data["description"], data["trigger_words"][0][0]))
    assert "<img" not in rendered and "onerror=alert(1)&gt;" in rendered


def test_search_terms_match_tags_notes_and_paths(lib: Library) -> None:
    names = lambda r: [e.name for e in r.entries]  # noqa: E731
    assert names(search(lib, "sword")) == ["hero"]
    assert names(search(lib, "watercolour")) == ["ink"]
    assert names(search(lib, "villains boss1")) == ["boss10"]
    assert names(search(lib, "HERO")) == ["hero"]
    assert names(search(lib, "", favorites_only=True)) == ["ink"]


def test_hidden_folders_need_a_longer_query(lib: Library) -> None:
    assert "hidden_one" not in [e.name for e in search(lib).entries]
    assert search(lib).hidden_folders == 1
    assert [e.name for e in search(lib, "hidden").entries] == ["hidden_one"]


def test_dot_named_files_are_hidden_as_dot_folders_are(lora_dir: Path, tmp_path: Path) -> None:
    """macOS leaves an AppleDouble `._good.safetensors` beside each file copied to a FAT or network
    drive: it showed as a broken card. A1111 makes every item whose path has "/." search-only; so
    is a dot-named file here, as a dot-folder's files are."""
    write_lora(lora_dir / "good.safetensors", kohya_metadata("good"))
    (lora_dir / "._good.safetensors").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\x00" * 4088)
    write_lora(lora_dir / ".draft.safetensors", kohya_metadata("draft"))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=0)
    by_name = {e.name: e for e in lib.entries}
    assert set(by_name) == {"good", "._good", ".draft"}
    assert not by_name["good"].hidden and by_name["._good"].hidden and by_name[".draft"].hidden
    assert by_name["._good"].error is not None
    r = search(lib)
    assert [e.name for e in r.entries] == ["good"] and r.hidden_folders == 2
    assert [e.name for e in search(lib, "good").entries] == ["._good", "good"]  # a search of 4 characters shows them
    assert card(lib, by_name[".draft"])["hidden"] is True
    assert lib.resolve(".draft").entry == by_name[".draft"]  # still found by name, as in A1111


def test_family_filter_reports_what_it_hides(lib: Library) -> None:
    r = search(lib, family="sd1")
    assert {e.name for e in r.entries} == {"hero", "ink", "zz_big"}  # unknown family stays visible
    assert r.hidden_by_family == 2 and r.hidden_families == {"SDXL": 2}
    assert r.filter_note() == "2 hidden by the SD1 filter"
    assert search(lib).filter_note() == ""


def test_a_user_sd_version_of_unknown_shows_the_card_for_every_model(lora_dir: Path, tmp_path: Path) -> None:
    """`"sd version": "Unknown"` is one of A1111's SdVersion names, which show the card whatever
    model is loaded: it was taken for "detect it", so an SDXL file set so stayed hidden on SD1.
    A name A1111 does not know (Civitai Browser+ writes "Other") still means "detect it"."""
    write_lora(lora_dir / "anywhere.safetensors", kohya_metadata("anywhere"), keys=SDXL_KEYS)
    write_lora(lora_dir / "other.safetensors", kohya_metadata("other"), keys=SDXL_KEYS)
    (lora_dir / "anywhere.json").write_text(json.dumps({"sd version": "Unknown"}))
    (lora_dir / "other.json").write_text(json.dumps({"sd version": "Other"}))
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    for family in ("sd1", "sd2", "sdxl"):
        assert "anywhere" in [e.name for e in search(lib, family=family).entries]
    r = search(lib, family="sd1")
    assert [e.name for e in r.entries] == ["anywhere"] and r.hidden_families == {"SDXL": 1}
    anywhere = lib.resolve("anywhere").entry
    assert anywhere is not None and anywhere.detected_family == "sdxl" and anywhere.family is None
    assert card(lib, anywhere)["family_source"] == "user"


def test_sorts_and_folder_filter(lib: Library) -> None:
    names = lambda r: [e.name for e in r.entries]  # noqa: E731
    assert names(search(lib, folder="chars/villains")) == ["boss2", "boss10"]
    assert names(search(lib, folder="chars", sort="name")) == ["boss2", "boss10", "hero"]
    assert names(search(lib, sort="name", descending=True))[0] == "zz_big"
    assert names(search(lib, sort="date", descending=True))[0] == "zz_big"
    assert names(search(lib, sort="size", descending=True))[0] == "zz_big"
    with pytest.raises(ValueError, match="unknown sort"):
        search(lib, sort="stars")


def test_folder_tree_counts(lib: Library) -> None:
    tree = folder_tree(lib.entries)
    assert tree["count"] == 6
    kids = {k["name"]: k for k in tree["children"]}
    assert list(kids) == [".secret", "chars", "styles"]
    assert kids["chars"]["count"] == 3 and kids["chars"]["children"][0]["path"] == "chars/villains"
    assert kids["chars"]["children"][0]["count"] == 2


def test_scan_command_json(lib: Library, lora_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["scan", str(lora_dir), "--json", "--cache-dir", str(tmp_path / "c"), "--hashes", "--duplicates"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and len(doc["entries"]) == 6 and doc["files_read"] == 0
    hero = next(r for r in doc["entries"] if r["name"] == "hero")
    assert hero["family"] == "sd1" and len(hero["hashes"]["a1111_short"]) == 12
    groups = {(g["kind"], tuple(g["files"])) for g in doc["duplicates"]}
    assert groups == {
        ("same-tensors", (".secret/hidden_one.safetensors", "chars/hero.safetensors")),
        ("same-tensors", ("chars/villains/boss2.safetensors", "chars/villains/boss10.safetensors")),
    }


def test_scan_command_table_and_missing_folder(lora_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_lora(lora_dir / "one.safetensors", kohya_metadata("One"))
    assert main(["scan", str(lora_dir), "--no-cache"]) == 0
    out = capsys.readouterr()
    assert "SD1" in out.out and "[One]" in out.out and "1 files" in out.err
    assert main(["scan", str(tmp_path / "nowhere"), "--no-cache"]) == 1
    assert "missing folder" in capsys.readouterr().err
    assert main(["scan", str(lora_dir / "one.safetensors"), "--no-cache"]) == 2  # a file given for a folder
    assert "one.safetensors: a LoRA folder is expected here, not a file" in capsys.readouterr().err


def test_scan_command_names_unreachable_links_and_what_is_no_file(lora_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`loraprompt scan` reports a symlink to an unplugged drive (its entries kept) and a FIFO named
    like a model (left out) as it reports a missing root: on stderr, in the JSON, and with exit 1."""
    media = tmp_path / "media"
    write_lora(media / "far.safetensors", kohya_metadata("Far"))
    (lora_dir / "usb").symlink_to(media)
    os.mkfifo(lora_dir / "pipe.safetensors")
    cache = ["--cache-dir", str(tmp_path / "c")]
    assert main(["scan", str(lora_dir), *cache]) == 1  # the FIFO
    assert f"not a regular file (a FIFO, socket or device), left out: {lora_dir / 'pipe.safetensors'}" in capsys.readouterr().err
    media.rename(tmp_path / "unplugged")
    assert main(["scan", str(lora_dir), "--json", *cache]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["offline_links"] == [str(lora_dir / "usb")] and doc["not_files"] == [str(lora_dir / "pipe.safetensors")]
    assert any(e["relpath"] == "usb/far.safetensors" for e in doc["entries"])
    assert main(["scan", str(lora_dir), *cache]) == 1
    assert f"link to a place not reachable (entries kept from the cache): {lora_dir / 'usb'}" in capsys.readouterr().err


def test_most_and_last_used_sorts_survive_restart(lib: Library, lora_dir: Path, tmp_path: Path) -> None:
    by_name = {e.name: e for e in lib.entries}
    lib.note_use([by_name["ink"], by_name["hero"]])
    lib.note_use([by_name["ink"], by_name["ink"]])  # named twice in one generation: one use
    lib.note_use([str(lora_dir / "chars" / "villains" / "boss2.safetensors")])
    again = Library([lora_dir], cache_dir=tmp_path / "c")
    ink = next(e for e in again.entries if e.name == "ink")
    assert again.usage(ink)[0] == 2
    names = [e.name for e in search(again, sort="uses", descending=True).entries]
    assert names[:3] == ["ink", "hero", "boss2"]  # ties keep walk order
    assert search(again, sort="recent", descending=True).entries[0].name == "boss2"


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc: a file that cannot be read, even by root")
def test_scan_hashes_a_file_that_cannot_be_read_is_its_row_s_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`loraprompt scan --hashes` stopped at the first file Library.hashes could not read (an I/O
    error, a file truncated since the scan), listing nothing; that file's row now carries the error
    (the exit code says a file is broken) and every other file is listed with its hashes."""
    lora = tmp_path / "Lora"
    write_lora(lora / "good.safetensors", kohya_metadata("good"))
    (lora / "bad.pt").symlink_to("/proc/self/mem")  # a regular file whose every read is an I/O error
    code = main(["scan", str(lora), "--json", "--no-cache", "--hashes"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["entries"]}
    assert code == 1 and set(rows) == {"good", "bad"}
    assert rows["bad"]["error"] == "cannot be hashed: cannot read: Input/output error" and "hashes" not in rows["bad"]
    assert rows["good"]["error"] is None and len(rows["good"]["hashes"]["a1111_short"]) == 12
