"""Name resolution: A1111's way first, then lenient fallbacks with a diagnostic each, and by hash."""

from __future__ import annotations

import hashlib
import os
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from loraprompt.library import Library

from .conftest import kohya_metadata, write_lora

NFD_NAME = unicodedata.normalize("NFD", "café")


@pytest.fixture
def lib(lora_dir: Path, tmp_path: Path) -> Library:
    write_lora(lora_dir / "detail_tweaker.safetensors", kohya_metadata("add_detail"), seed=1)
    write_lora(lora_dir / "styles" / "Anime Lines.safetensors", kohya_metadata("lines"), seed=2)
    write_lora(lora_dir / "styles" / f"{NFD_NAME}.safetensors", {}, seed=3)
    write_lora(lora_dir / "chars" / "Hero (v2).safetensors", {}, seed=4)
    write_lora(lora_dir / "a" / "same.safetensors", kohya_metadata("shared"), seed=5)
    write_lora(lora_dir / "b" / "Same.safetensors", kohya_metadata("shared"), seed=6)
    write_lora(lora_dir / "none_alias.safetensors", kohya_metadata("none"), seed=7)
    write_lora(lora_dir / "clash.safetensors", kohya_metadata("detail_tweaker"), seed=8)
    return Library([lora_dir], cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    ("name", "relpath", "how", "codes"),
    [
        ("detail_tweaker", "detail_tweaker.safetensors", "stem", []),
        ("add_detail", "detail_tweaker.safetensors", "alias", []),
        ("lines", "styles/Anime Lines.safetensors", "alias", []),
        (" detail_tweaker ", "detail_tweaker.safetensors", "trim", ["W-NAME-TRIMMED"]),
        ('"Anime Lines"', "styles/Anime Lines.safetensors", "quotes", ["W-NAME-QUOTED"]),
        (r"Hero \(v2\)", "chars/Hero (v2).safetensors", "escapes", ["W-NAME-ESCAPED"]),
        ("Hero (v2)", "chars/Hero (v2).safetensors", "stem", []),
        ("café", f"styles/{NFD_NAME}.safetensors", "unicode-nfc", ["W-NAME-UNICODE"]),
        ("ｃａｆé", f"styles/{NFD_NAME}.safetensors", "unicode-nfkc", ["W-NAME-UNICODE"]),
        ("styles/Anime Lines", "styles/Anime Lines.safetensors", "path", ["W-NAME-PATH"]),
        ("styles\\Anime Lines.safetensors", "styles/Anime Lines.safetensors", "path", ["W-NAME-PATH"]),
        ("a/same", "a/same.safetensors", "path", ["W-NAME-PATH"]),
        ("anime lines", "styles/Anime Lines.safetensors", "case", ["W-NAME-CASE"]),
        ("anime_lines", "styles/Anime Lines.safetensors", "underscore", ["W-NAME-UNDERSCORE"]),
        ("DETAIL TWEAKER", "detail_tweaker.safetensors", "underscore", ["W-NAME-UNDERSCORE"]),
    ],
)
def test_resolution_table(lib: Library, name: str, relpath: str, how: str, codes: list[str]) -> None:
    r = lib.resolve(name)
    assert r.entry is not None and r.entry.relpath == relpath
    assert r.how == how and [d.code for d in r.diagnostics] == codes


def test_ambiguous_fallback_lists_candidates(lib: Library) -> None:
    r = lib.resolve("SAME")
    assert r.entry is None and [d.code for d in r.diagnostics] == ["E-NAME-AMBIGUOUS"]
    assert {e.relpath for e in r.candidates} == {"a/same.safetensors", "b/Same.safetensors"}


def test_path_hint_names_what_chooses_the_file(lora_dir: Path, tmp_path: Path) -> None:
    """A folder path given for one of two files sharing a stem: the hint must not say to write the
    stem (that finds the other file); it says the path is what chooses it, and where it does not work."""
    write_lora(lora_dir / "one" / "twin.safetensors", {}, seed=21)
    write_lora(lora_dir / "two" / "twin.safetensors", {}, seed=22)
    write_lora(lora_dir / "styles" / "solo.safetensors", {}, seed=23)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert lib.resolve("twin").entry.relpath == "two/twin.safetensors"  # type: ignore[union-attr]
    for written in ("one/twin", "one\\twin.safetensors", "ONE/Twin"):
        r = lib.resolve(written)
        assert r.entry is not None and r.entry.relpath == "one/twin.safetensors"
        message = r.diagnostics[0].message
        assert "write 'twin'" not in message, message
        assert "2 files are named 'twin' and 'twin' finds two/twin.safetensors" in message
        assert "the folder path 'one/twin' is the name that chooses this one" in message
        assert "built-in Lora does not read folder paths" in message
    # the last of the twins is what the stem finds, and a lone file's stem finds it: the hint says so
    assert lib.resolve("two/twin").diagnostics[0].message.endswith("write 'twin'")
    solo = lib.resolve("styles/solo")
    assert [d.code for d in solo.diagnostics] == ["W-NAME-PATH"] and solo.diagnostics[0].message.endswith("write 'solo'")


def test_forbidden_aliases_resolve_only_as_stems(lib: Library) -> None:
    # two files share "shared"; "none" is forbidden; "detail_tweaker" as an alias collides with a stem
    for name in ("shared", "none"):
        assert lib.resolve(name, profile="a1111").entry is None
    r = lib.resolve("detail_tweaker")
    assert r.entry is not None and r.entry.name == "detail_tweaker"
    clash = lib.resolve("clash").entry
    assert clash is not None and lib.display_name(clash) == "clash"
    detail = lib.resolve("detail_tweaker").entry
    assert detail is not None and lib.display_name(detail) == "add_detail"


def test_a1111_profile_has_no_fallbacks(lib: Library) -> None:
    r = lib.resolve("anime lines", profile="a1111")
    assert r.entry is None and [d.code for d in r.diagnostics] == ["E-NAME-NOTFOUND"]


def test_not_found_suggests_close_names(lib: Library) -> None:
    r = lib.resolve("detail_tweeker")
    assert r.entry is None and r.diagnostics[0].severity == "error"
    assert "detail_tweaker" in r.diagnostics[0].data["suggestions"]


def test_empty_name(lib: Library) -> None:
    assert [d.code for d in lib.resolve("  ").diagnostics] == ["E-NAME-EMPTY"]


@pytest.mark.parametrize("call, match", [
    (lambda lib: lib.resolve(None), "name must be a str, not NoneType"),
    (lambda lib: lib.resolve(b"detail_tweaker"), "name must be a str, not bytes"),
    (lambda lib: lib.resolve("detail_tweaker", hash=0x0123456789AB), "hash must be a str or None, not int"),
    (lambda lib: lib.find_by_hash(None), "wanted must be a str, not NoneType"),
    (lambda lib: lib.find_by_hash(0x0123456789AB), "wanted must be a str, not int"),
    (lambda lib: lib.resolve("detail_tweaker", profile="A1111"), "unknown profile 'A1111'; use 'loraprompt' or 'a1111'"),
])
def test_misused_arguments_are_refused_by_name(lib: Library, call: Callable[[Library], object], match: str) -> None:
    """resolve(None) and find_by_hash(None) raised AttributeError ('NoneType' object has no
    attribute 'strip'); a hash= that is not a str did too, once the name did not match it. An
    unknown profile silently meant loraprompt's, as parse() refuses it."""
    with pytest.raises((TypeError, ValueError), match=match):
        call(lib)
    assert lib.resolve("detail_tweaker").how == "stem"  # valid calls unchanged


def test_resolve_by_hash_forms(lib: Library) -> None:
    target = lib.resolve("lines").entry
    assert target is not None
    h = lib.hashes(target)
    for form in (h["a1111_short"], h["autov2"], h["sha256"], h["tensor_sha256"]):
        assert form is not None
        r = lib.resolve("renamed_on_other_machine", hash=form.upper())
        assert r.entry == target and r.how == "hash"
        assert [d.code for d in r.diagnostics] == ["W-NAME-BY-HASH"]
    assert lib.resolve("", hash=h["a1111_short"]).entry == target


def test_hash_mismatch_warns_but_keeps_named_file(lib: Library) -> None:
    r = lib.resolve("detail_tweaker", hash="0123456789ab")
    assert r.entry is not None and r.entry.name == "detail_tweaker"
    assert [d.code for d in r.diagnostics] == ["W-HASH-MISMATCH"]


def test_a_broken_file_named_with_a_hash_resolves_and_is_left_to_the_reader(lora_dir: Path, tmp_path: Path) -> None:
    """Found by a review: `<lora:broken:1:hash=...>` made resolve raise AdapterFileError from the hash
    check (the extension's runtime let it end the generation); the file is broken, not another one,
    so it resolves with no hash warning and reading it reports why, naming it."""
    from loraprompt.errors import AdapterFileError

    broken = lora_dir / "broken.safetensors"
    broken.write_bytes(b"\xff" * 8 + b"not a header")
    os.utime(broken, (time.time() - 60, time.time() - 60))  # settled: scanned as a broken file
    lib = Library(lora_dir, tmp_path / "cache2", persist=False, settle_s=0.0)
    assert next(e for e in lib.entries if e.name == "broken").error
    r = lib.resolve("broken", hash="0123456789ab")
    assert r.entry is not None and r.entry.name == "broken" and r.diagnostics == ()
    with pytest.raises(AdapterFileError, match=r"broken\.safetensors"):
        lib.hashes(r.entry)


def test_new_file_found_without_refresh(lib: Library, lora_dir: Path) -> None:
    lib.auto_check_s = 3600
    write_lora(lora_dir / "dropped_in.safetensors")
    assert lib.resolve("dropped_in").how == "stem"


def test_find_by_hash_knows_only_computed_or_claimed_hashes(lora_dir: Path, tmp_path: Path) -> None:
    a = write_lora(lora_dir / "a.safetensors", {}, seed=11)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    short = Library([lora_dir], persist=False).hashes(lib.entries[0])["a1111_short"]
    assert short is not None
    assert lib.find_by_hash(short, compute=False) == []  # A1111 semantics: only hashes already computed
    assert [e.name for e in lib.find_by_hash(short)] == ["a"]
    assert [e.name for e in lib.find_by_hash(short, compute=False)] == ["a"]  # now known (and cached)
    # a header that claims a hash (kohya's sshs_model_hash) is checked before it is believed
    data_hash = hashlib.sha256(a.read_bytes()[8 + int.from_bytes(a.read_bytes()[:8], "little"):]).hexdigest()
    write_lora(lora_dir / "claims.safetensors", {"sshs_model_hash": data_hash}, seed=11)
    write_lora(lora_dir / "liar.safetensors", {"sshs_model_hash": data_hash}, seed=12)
    fresh = Library([lora_dir], cache_dir=tmp_path / "c2")
    assert sorted(e.name for e in fresh.find_by_hash(data_hash[:12], compute=False)) == ["claims"]


@pytest.mark.parametrize("wanted", ["", "  ", "abc", "not-a-hash-at-all", "0x1234"])
def test_find_by_hash_of_a_value_no_hash_has_reads_no_file(lora_dir: Path, tmp_path: Path, wanted: str) -> None:
    """A value that is not 10, 12 or 64 hex digits can match nothing, yet find_by_hash hashed the
    whole library for it, and '' (every header's claimed hash starts with it) read a broken file
    and raised AdapterFileError; resolve(name, hash=...) passes a tag's hash= straight here."""
    write_lora(lora_dir / "good.safetensors", {}, seed=1)
    broken = lora_dir / "broken.safetensors"
    broken.write_bytes(b"garbage" * 10)
    os.utime(broken, (time.time() - 600, time.time() - 600))  # settled: scanned as a broken file
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert sorted((e.name, e.error is not None) for e in lib.entries) == [("broken", True), ("good", False)]
    assert lib.find_by_hash(wanted) == []
    assert all(lib.hashes(e, compute=False) == {} for e in lib.entries)  # nothing was hashed


@pytest.mark.parametrize("prefix", ["", "0x"])
def test_a_hash_claimed_in_the_header_is_found_without_hashing_the_library(lora_dir: Path, tmp_path: Path,
                                                                            prefix: str) -> None:
    """kohya and LyCORIS precompute `sshs_model_hash`; LyCORIS writes it as `0x<sha256>`, which the
    claimed-hash step never matched, so a tag's hash= found such a file only by hashing every file
    (and never with compute=False, A1111's known-hashes-only way)."""
    from loraprompt.library.hashes import file_hashes

    path = write_lora(lora_dir / "ly.safetensors", {}, seed=3)
    tensor_hash = str(file_hashes(path)["a1111"])
    write_lora(path, {"sshs_model_hash": prefix + tensor_hash}, seed=3)  # same tensors: same tensor hash
    write_lora(lora_dir / "other.safetensors", {}, seed=4)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert [e.name for e in lib.find_by_hash(tensor_hash[:12], compute=False)] == ["ly"]
    other = next(e for e in lib.entries if e.name == "other")
    assert lib.hashes(other, compute=False) == {}  # only the claimed file was read
