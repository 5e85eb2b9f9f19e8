"""Scanning real files: entries, family, metadata summary, previews, sidecars, refresh."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from loraprompt.library import Library
from loraprompt.library.cache import VERSION as CACHE_VERSION

from .conftest import SD1_KEYS, SD2_KEYS, SDXL_KEYS, kohya_metadata, write_lora

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def bump_mtime(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_entries_fields_and_summary(lora_dir: Path, tmp_path: Path) -> None:
    tags = {"5_a": {"cat": 3, "solo": 9}, "5_b": {"cat": 10, "hat": 1}}
    path = write_lora(lora_dir / "sub" / "catstyle.safetensors", kohya_metadata("CatStyle", tags=tags))
    lib = Library([lora_dir], cache_dir=tmp_path / "cache")
    (e,) = lib.entries
    assert (e.name, e.alias, e.relpath, e.folder) == ("catstyle", "CatStyle", "sub/catstyle.safetensors", "sub")
    assert e.path == str(path) and e.size == path.stat().st_size and e.mtime_ns == path.stat().st_mtime_ns
    assert e.summary.tags == (("cat", 13), ("solo", 9), ("hat", 1))
    assert e.summary.trigger_words[:3] == ("cat", "solo", "hat")
    assert (e.summary.dim, e.summary.alpha, e.summary.epochs) == ("16", "8", "10")
    assert e.summary.resolution == "(512, 512)" and e.summary.base_model == "v1-5-pruned-emaonly.safetensors"
    assert e.family == "sd1" and e.error is None


def test_family_from_keys_metadata_and_sidecar(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "xl.safetensors", {}, keys=SDXL_KEYS)
    write_lora(lora_dir / "v2.safetensors", {}, keys=SD2_KEYS)
    write_lora(lora_dir / "v1.safetensors", {}, keys=SD1_KEYS)
    write_lora(lora_dir / "meta.safetensors", {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, keys={"x": (2, 2)})
    write_lora(lora_dir / "unknown.safetensors", {}, keys={"x": (2, 2)})
    write_lora(lora_dir / "conflict.safetensors", {"ss_base_model_version": "sd_v1"}, keys=SDXL_KEYS)
    write_lora(lora_dir / "user.safetensors", {}, keys={"x": (2, 2)})
    (lora_dir / "user.json").write_text(json.dumps({"sd version": "SD2"}))
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    fam = {e.name: (e.family, e.family_source) for e in lib.entries}
    assert fam["xl"] == ("sdxl", "keys") and fam["v2"] == ("sd2", "keys") and fam["v1"] == ("sd1", "keys")
    assert fam["meta"] == ("sdxl", "metadata") and fam["unknown"] == (None, None)
    assert fam["conflict"] == ("sdxl", "keys")
    assert next(e for e in lib.entries if e.name == "conflict").notes == ("the metadata says SD1.x, the tensor names and shapes say SDXL",)
    user = next(e for e in lib.entries if e.name == "user")
    assert user.family == "sd2" and user.detected_family is None


def test_previews_in_a1111_order_and_sidecars(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "a.safetensors", kohya_metadata("a"))
    for name in ("a.preview.png", "a.jpg", "a.png", "a.preview.webp", "b.png"):
        (lora_dir / name).write_bytes(PNG)
    (lora_dir / "a.json").write_text(json.dumps({"activation text": "cat ears, hat", "preferred weight": 0.7, "modelId": 5}))
    (lora_dir / "a.civitai.info").write_text(json.dumps({"id": 9, "modelId": 5, "trainedWords": ["meow"], "model": {"name": "Cats", "nsfw": True}}))
    write_lora(lora_dir / "pony.safetensors", kohya_metadata("pony", base="sdxl_base_v1-0"), keys=SDXL_KEYS)
    (lora_dir / "pony.civitai.info").write_text(json.dumps({"baseModel": "Pony", "trainedWords": []}))
    (lora_dir / "a.metadata.json").write_text(json.dumps({"tags": ["animal"], "favorite": True, "usage_tips": '{"strength": 0.6}'}))
    (lora_dir / "a.txt").write_text("A cat style.")
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    e, pony = lib.entries
    assert pony.base_model == "Pony" and pony.family == "sdxl"
    names = [Path(p).name for p in e.previews]
    assert names == ["a.png", "a.preview.png", "a.jpg", "a.preview.webp"] and e.preview == str(lora_dir / "a.png")
    assert e.user["modelId"] == 5 and e.preferred_weight == 0.7 and e.activation_text == "cat ears, hat"
    assert e.imports["civitai"]["trained_words"] == ["meow"] and e.nsfw and e.favorite
    assert e.base_model == "sd_v1"  # the civitai.info here names no base model
    assert e.description == "A cat style."
    words = e.trigger_words()
    assert words[:3] == [("cat ears", "user"), ("hat", "user"), ("meow", "civitai")]
    assert ("cat", "header") in words
    assert "animal" in e.search_text and "meow" in e.search_text


def test_refresh_reports_added_changed_removed(lora_dir: Path, tmp_path: Path) -> None:
    a = write_lora(lora_dir / "a.safetensors", kohya_metadata("a"))
    b = write_lora(lora_dir / "b.safetensors", kohya_metadata("b"))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", auto_check_s=0)
    write_lora(lora_dir / "c.safetensors", kohya_metadata("c"))
    write_lora(a, kohya_metadata("a2"))
    bump_mtime(a)
    b.unlink()
    report = lib.refresh()
    assert report.added == (str(lora_dir / "c.safetensors"),)
    assert report.changed == (str(a),) and report.removed == (str(b),)
    assert report.files_read == 2
    assert {e.alias for e in lib.entries} == {"a2", "c"}


def test_automatic_staleness_check_sees_new_file(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "sub" / "a.safetensors")
    lib = Library([lora_dir], cache_dir=tmp_path / "c", auto_check_s=0)
    assert lib.is_stale()  # folders modified within the filesystem's clock tick are re-checked
    for d in (lora_dir, lora_dir / "sub"):
        os.utime(d, ns=(1, time.time_ns() - 60 * 10**9))
    lib.refresh()
    assert not lib.is_stale()
    write_lora(lora_dir / "sub" / "new.safetensors")
    assert lib.is_stale()
    assert {e.name for e in lib.entries} == {"a", "new"}
    assert not lib.is_stale() or lib.refresh().files_read == 0


def test_missing_drive_keeps_entries(tmp_path: Path) -> None:
    drive = tmp_path / "drive" / "Lora"
    write_lora(drive / "far.safetensors", kohya_metadata("far"))
    local = tmp_path / "Lora"
    write_lora(local / "near.safetensors")
    lib = Library([local, drive], cache_dir=tmp_path / "c")
    (tmp_path / "drive").rename(tmp_path / "unplugged")
    report = lib.refresh()
    assert report.offline_roots == (str(drive),) and report.removed == ()
    far = next(e for e in lib.entries if e.name == "far")
    assert far.offline and far.alias == "far"
    # a new process while the drive is still missing lists its files from the cache
    restarted = Library([local, drive], cache_dir=tmp_path / "c")
    far2 = next(e for e in restarted.entries if e.name == "far")
    assert far2.offline and far2.alias == "far" and far2.relpath == "far.safetensors" and far2.family == "sd1"
    # the cache kept the unplugged drive's records: plugging it back in reads nothing again
    (tmp_path / "unplugged").rename(tmp_path / "drive")
    lib2 = Library([local, drive], cache_dir=tmp_path / "c")
    assert lib2.last_report.files_read == 0 and {e.name for e in lib2.entries} == {"near", "far"}
    # and the library that saw it go sees it come back: the same stat, but no longer offline
    assert lib.refresh().offline_roots == ()
    assert not next(e for e in lib.entries if e.name == "far").offline


def test_half_written_file_skipped_until_it_settles(lora_dir: Path, tmp_path: Path) -> None:
    full = write_lora(tmp_path / "full.safetensors", kohya_metadata("late"))
    data = full.read_bytes()
    part = lora_dir / "late.safetensors"
    part.write_bytes(data[: len(data) // 2])
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=60)
    assert lib.entries == [] and lib.last_report.pending == (str(part),)
    part.write_bytes(data)
    lib.refresh()
    assert [e.alias for e in lib.entries] == ["late"]


def test_a_broken_file_dated_in_the_future_is_listed_broken_not_pending(lora_dir: Path, tmp_path: Path) -> None:
    """A file unpacked from an archive made on a machine whose clock ran ahead (or on a share with
    such a clock) has an mtime in the future: broken, it was "still being written" (left out of
    the gallery, its tag answered "not readable yet") until the clock passed that date. A future
    mtime within `settle_s` (clock skew of a share being written) still waits."""
    part = lora_dir / "ahead.safetensors"
    part.write_text("not a safetensors file")
    skewed = lora_dir / "skewed.safetensors"
    skewed.write_text("the first bytes of a copy")
    day = time.time() + 86400
    os.utime(part, (day, day))
    os.utime(skewed, (time.time() + 5, time.time() + 5))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=60)
    assert lib.last_report.pending == (str(skewed),)
    (entry,) = lib.entries
    assert entry.path == str(part) and entry.error
    assert "not readable yet" not in " ".join(d.message for d in lib.resolve("ahead").diagnostics)


def test_a_file_that_finishes_copying_appears_without_a_folder_change(lora_dir: Path, tmp_path: Path) -> None:
    """A copy into models/Lora creates the file (the folder's mtime moves: a rescan finds it half
    written, pending), then only writes into it, which leaves the folder's mtime alone: the library
    never looked at the file again, so the new LoRA never appeared until something else changed in
    the folder or Refresh was pressed. A pending file is read again once it has settled."""
    full = write_lora(tmp_path / "full.safetensors", kohya_metadata("late"))
    data = full.read_bytes()
    part = lora_dir / "late.safetensors"
    part.write_bytes(data[: len(data) // 2])
    past = time.time() - 60
    os.utime(lora_dir, (past, past))  # the folder changed a while ago: no racy mtime keeps it stale
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=1.0, auto_check_s=0)
    assert lib.last_report.pending == (str(part),) and "late" not in [e.name for e in lib.entries]
    with open(part, "r+b") as f:  # the copy goes on in place
        f.seek(len(data) // 2)
        f.write(data[len(data) // 2:])
    os.utime(lora_dir, (past, past))
    assert "late" not in [e.name for e in lib.entries]  # written just now: not settled yet
    time.sleep(1.2)
    assert [e.alias for e in lib.entries if e.name == "late"] == ["late"]
    assert lib.last_report.pending == ()
    assert not lib.is_stale()


def test_a_tag_naming_a_file_still_being_written_says_so_instead_of_not_found(lora_dir: Path, tmp_path: Path) -> None:
    part = lora_dir / "sub" / "Late.safetensors"
    part.parent.mkdir()
    part.write_text("the first bytes of a copy")
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=60)
    for name in ("late", "sub/Late"):
        (diag,) = lib.resolve(name).diagnostics
        assert diag.code == "E-NAME-NOTFOUND" and str(part) in diag.message and "not readable yet" in diag.message
    (other,) = lib.resolve("early").diagnostics
    assert other.message == "LoRA 'early' not found"
    lib.settle_s = 0  # settled: listed with its error; the tag resolves and loading names the reason
    lib.refresh()
    entry = lib.resolve("late").entry
    assert entry is not None and entry.error is not None


def test_broken_settled_file_listed_with_error(lora_dir: Path, tmp_path: Path) -> None:
    (lora_dir / "junk.safetensors").write_text("this is not a safetensors file")
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=0)
    (e,) = lib.entries
    assert e.error is not None and "header length" in e.error and e.family is None


def test_replaced_file_gives_fresh_metadata_and_hash(lora_dir: Path, tmp_path: Path) -> None:
    p = write_lora(lora_dir / "x.safetensors", kohya_metadata("old"), seed=1)
    lib = Library([lora_dir], cache_dir=tmp_path / "c", auto_check_s=3600)
    first = lib.resolve("x").entry
    assert first is not None and first.alias == "old"
    old_hash = lib.hashes(first)["a1111"]
    write_lora(p, kohya_metadata("new"), seed=2, keys={"w": (3, 5)})
    bump_mtime(p)
    entry = lib.resolve("x").entry
    assert entry is not None and entry.alias == "new" and entry.size == p.stat().st_size
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert lib.hashes(entry)["a1111"] == hashlib.sha256(data[8 + n :]).hexdigest() != old_hash


def test_hidden_folder_flag_and_symlink_loop(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / ".hidden" / "h.safetensors")
    (lora_dir / "loop").symlink_to(lora_dir)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    (e,) = lib.entries
    assert e.hidden and e.relpath == ".hidden/h.safetensors"


def test_natural_walk_order_and_stem_collision(lora_dir: Path, tmp_path: Path) -> None:
    for rel in ("lora10.safetensors", "lora2.safetensors", "a/dup.safetensors", "b/dup.safetensors"):
        write_lora(lora_dir / rel)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert [e.relpath for e in lib.entries] == ["lora2.safetensors", "lora10.safetensors", "a/dup.safetensors", "b/dup.safetensors"]
    r = lib.resolve("dup")
    assert r.entry is not None and r.entry.relpath == "b/dup.safetensors"
    assert [d.code for d in r.diagnostics] == ["W-NAME-STEM-COLLISION"]


def test_cache_survives_restart_without_reading(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "a.safetensors", kohya_metadata("a"))
    first = Library([lora_dir], cache_dir=tmp_path / "c")
    assert first.last_report.files_read == 1
    second = Library([lora_dir], cache_dir=tmp_path / "c")
    assert second.last_report.files_read == 0
    assert second.entries == first.entries


def test_duplicate_groups_by_content(lora_dir: Path, tmp_path: Path) -> None:
    a = write_lora(lora_dir / "a.safetensors", {"x": "1"}, seed=1)
    (lora_dir / "copy").mkdir()
    (lora_dir / "copy" / "a_copy.safetensors").write_bytes(a.read_bytes())
    write_lora(lora_dir / "retagged.safetensors", {"x": "2, longer"}, seed=1)
    write_lora(lora_dir / "other" / "a.safetensors", {"x": "1"}, seed=2)
    write_lora(lora_dir / "unrelated.safetensors", {}, seed=3, keys={"w": (7, 7)})
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    groups = {(g.kind, tuple(sorted(e.relpath for e in g.entries))) for g in lib.duplicates()}
    assert groups == {
        ("same-file", ("a.safetensors", "copy/a_copy.safetensors")),
        ("same-tensors", ("a.safetensors", "copy/a_copy.safetensors", "retagged.safetensors")),
        ("same-name", ("a.safetensors", "other/a.safetensors")),
    }


def test_seconds_old_file_is_read_again_once(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "fresh.safetensors", kohya_metadata("v1"), age_s=0)
    write_lora(lora_dir / "old.safetensors", kohya_metadata("old"))
    assert Library([lora_dir], cache_dir=tmp_path / "c").last_report.files_read == 2
    # same size and mtime could hide a rewrite inside one filesystem clock tick: read it again
    assert Library([lora_dir], cache_dir=tmp_path / "c").last_report.files_read == 1


def test_a_preview_replaced_under_its_name_gives_a_new_entry(lora_dir: Path, tmp_path: Path) -> None:
    """Entries are reused only while the file, its sidecars and its previews are unchanged. A preview
    overwritten in place (same name, model file untouched and out of the racy window, so not read
    again) must still give a new entry: the gallery's cards and thumbnail URLs are keyed by entries
    (a card kept its old thumbnail URL when the machine was slow enough to leave the racy window)."""
    write_lora(lora_dir / "a.safetensors", kohya_metadata("a"), seed=1)
    write_lora(lora_dir / "b.safetensors", kohya_metadata("b"), seed=2)
    for stem in "ab":
        (lora_dir / f"{stem}.png").write_bytes(PNG)
        os.utime(lora_dir / f"{stem}.png", (time.time() - 60, time.time() - 60))
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    a, b = (lib.get(lora_dir / f"{stem}.safetensors") for stem in "ab")
    (lora_dir / "a.png").write_bytes(PNG + b"\0")  # A1111's "replace preview" writes in place
    report = lib.refresh()
    assert report.files_read == 0 and report.changed == ()
    new_a = lib.get(lora_dir / "a.safetensors")
    assert new_a is not a and new_a is not None and new_a.previews == a.previews  # type: ignore[union-attr]
    assert lib.get(lora_dir / "b.safetensors") is b  # an unchanged file keeps its entry


def test_hashes_are_cached_on_disk(lora_dir: Path, tmp_path: Path) -> None:
    p = write_lora(lora_dir / "a.safetensors", kohya_metadata("a"))
    first = Library([lora_dir], cache_dir=tmp_path / "c")
    computed = first.hashes(first.entries[0])
    second = Library([lora_dir], cache_dir=tmp_path / "c")
    assert second.hashes(second.entries[0], compute=False) == computed
    assert computed["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_truncated_between_scan_and_load_is_reported(lora_dir: Path, tmp_path: Path) -> None:
    p = write_lora(lora_dir / "t.safetensors", kohya_metadata("t"), keys={"w": (64, 64)})
    lib = Library([lora_dir], cache_dir=tmp_path / "c", auto_check_s=3600)
    assert lib.resolve("t").entry is not None
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 100)
    entry = lib.resolve("t").entry
    assert entry is not None and entry.error is not None and "truncated" in entry.error


def test_cache_forgets_removed_files_but_not_unplugged_ones(tmp_path: Path) -> None:
    local, drive = tmp_path / "Lora", tmp_path / "drive" / "Lora"
    a = write_lora(local / "a.safetensors")
    (local / "a.json").write_text("{}")
    write_lora(drive / "far.safetensors")
    lib = Library([local, drive], cache_dir=tmp_path / "c")
    cached = lambda: {Path(p).name for p in json.loads(next((tmp_path / "c").glob("*.json")).read_text())["files"]}  # noqa: E731
    assert cached() == {"a.safetensors", "a.json", "far.safetensors"}
    a.unlink()
    (local / "a.json").unlink()
    (tmp_path / "drive").rename(tmp_path / "away")
    lib.refresh()
    assert cached() == {"far.safetensors"}


def test_file_being_rewritten_is_pending_not_removed(lora_dir: Path, tmp_path: Path) -> None:
    p = write_lora(lora_dir / "a.safetensors", kohya_metadata("a"))
    lib = Library([lora_dir], cache_dir=tmp_path / "c", settle_s=60)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    report = lib.refresh()
    assert report.pending == (str(p),) and report.removed == () and lib.entries == []
    p.write_bytes(data)
    assert lib.refresh().added == (str(p),)
    assert [e.alias for e in lib.entries] == ["a"]


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight": (4, 640)}, "sdxl"),
        ({"unet.down_blocks.2.attentions.0.transformer_blocks.3.attn1.to_q.lora_A.weight": (4, 1280)}, "sdxl"),
        ({"lora_unet_middle_block_1_transformer_blocks_2_ff_net_2.lora_down.weight": (4, 5120)}, "sdxl"),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1024)}, "sd2"),
        ({"transformer.transformer_blocks.1.attn.to_k.lora_A.weight": (4, 1536),
          "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 1280)}, "sd3"),
        ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072)}, "flux"),
        ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)}, "flux"),
        ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": (4, 5120)}, "wan"),
        # diffusers' convert_state_dict_to_kohya writes lora_te1_ for SD1: the shapes decide
        ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
          "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)}, "sd1"),
        ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}, "sd1"),
    ],
)
def test_family_from_key_names(lora_dir: Path, tmp_path: Path, keys: dict[str, tuple[int, ...]], family: str | None) -> None:
    write_lora(lora_dir / "x.safetensors", {}, keys=keys)
    (e,) = Library([lora_dir], cache_dir=tmp_path / "c").entries
    assert e.family == family


def test_pickle_files_listed_without_reading(lora_dir: Path, tmp_path: Path) -> None:
    (lora_dir / "old.pt").write_bytes(b"\x80\x02}q\x00.")
    (lora_dir / "older.CKPT").write_bytes(b"\x80\x02}q\x00.")
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert [(e.name, e.kind, e.family, e.error) for e in lib.entries] == [("old", "pickle", None, None), ("older", "pickle", None, None)]
    assert lib.hashes(lib.entries[0])["a1111"] == hashlib.sha256(b"\x80\x02}q\x00.").hexdigest()


@pytest.mark.parametrize("content", ["{truncated", '{"version": 999, "files": {}}', "[]",
                                     '{"version": VERSION, "files": {PATH: {"size": 1, "mtime_ns": 2}}}',
                                     '{"version": VERSION, "files": {PATH: [1, "2", null]}}'])
def test_unusable_cache_file_is_rebuilt(lora_dir: Path, tmp_path: Path, content: str) -> None:
    write_lora(lora_dir / "a.safetensors", kohya_metadata("a"))
    Library([lora_dir], cache_dir=tmp_path / "c")
    (cache_file,) = (tmp_path / "c").glob("library-*.json")
    bad_record = content.replace("PATH", json.dumps(str(lora_dir / "a.safetensors"))).replace("VERSION", str(CACHE_VERSION))
    cache_file.write_text(bad_record)
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert lib.last_report.files_read == 1 and lib.entries[0].alias == "a"
    assert json.loads(cache_file.read_text())["version"] == CACHE_VERSION


def test_natural_key_orders_as_a1111s_list_key() -> None:
    """The scan's one-string sort key orders (and ties) names exactly as A1111's list key
    (modules/util.py natural_sort_key), which compares runs of ASCII digits as integers and the
    rest lower-cased (`lora.x` before `lora2.x`; `ß` stays `ß`, `٣` is no digit)."""
    import itertools
    import random
    import re

    from loraprompt.library.scanner import natural_key

    def a1111(text: str) -> list[object]:
        return [int(t) if t.isdigit() else t.lower() for t in re.split("([0-9]+)", text)]

    rng = random.Random(15)
    alphabet = "aAbZ_-./ ~éßs0123456789"
    names = ["lora", "lora2", "lora10", "lora.safetensors", "lora2.safetensors", "Lora007", "lora7", "a/b", "a/b/c", "a-1", "a1",
             "x٣", "x3", "x10", "straße", "strasse1", "STRASSE"] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(3000)]
    for a, b in itertools.pairwise(names):
        assert (a1111(a) < a1111(b), a1111(a) == a1111(b)) == (natural_key(a) < natural_key(b), natural_key(a) == natural_key(b)), (a, b)
    assert sorted(names, key=a1111) == sorted(names, key=natural_key)


@pytest.mark.parametrize("old", [3, 4])
def test_a_cache_of_a_previous_version_is_read_again(lora_dir: Path, tmp_path: Path, old: int) -> None:
    """Version 3 kept summaries with their quotes as written; version 4 swaps " and `; version 5
    keeps each file's inode and ctime in the row (a file of an old version would be misread, so it
    is ignored and the headers read again)."""
    from loraprompt.library.entry import SUMMARY_SWAP

    write_lora(lora_dir / "a.safetensors", kohya_metadata("a", tags={"1_x": {'say "hi"': 3, "`tick`": 2}}))
    first = Library([lora_dir], cache_dir=tmp_path / "c").entries[0]
    (cache_file,) = (tmp_path / "c").glob("library-*.json")
    doc = json.loads(cache_file.read_text())
    for row in doc["files"].values():
        del row[4]  # versions 3 and 4: [size, mtime_ns, extras, ino, kind, summary, ...], no ctime
        if old == 3:
            row[5] = row[5].translate(SUMMARY_SWAP)  # as version 3 wrote it
    cache_file.write_text(json.dumps({**doc, "version": old}))
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    assert lib.last_report.files_read == 1 and json.loads(cache_file.read_text())["version"] == CACHE_VERSION == 6
    warm = Library([lora_dir], cache_dir=tmp_path / "c")
    assert warm.last_report.files_read == 0
    for e in (first, lib.entries[0], warm.entries[0]):
        assert e.summary.tags == (('say "hi"', 3), ("`tick`", 2)) and e.trigger_words()[0] == ('say "hi"', "header")


def test_a_warm_scan_keeps_the_natural_order_through_the_saved_one(lora_dir: Path, tmp_path: Path) -> None:
    """The cache saves its records in the entries' order (A1111's walk order: a folder's files,
    then its subfolders') and a warm scan sorts by it; a file new since then (its record
    appended) makes the scan sort by name again."""
    for name in ("b/lora10", "lora2", "b/Lora9", "a", "b1/x"):
        write_lora(lora_dir / f"{name}.safetensors")
    expected = ["a.safetensors", "lora2.safetensors", "b/Lora9.safetensors", "b/lora10.safetensors", "b1/x.safetensors"]
    assert [e.relpath for e in Library([lora_dir], cache_dir=tmp_path / "c").entries] == expected
    (cache_file,) = (tmp_path / "c").glob("library-*.json")
    doc = json.loads(cache_file.read_text())
    assert doc["in_order"] == "a1111-walk" and [p for p in doc["files"] if p.endswith(".safetensors")] == [str(lora_dir / p) for p in expected]
    assert [e.relpath for e in Library([lora_dir], cache_dir=tmp_path / "c").entries] == expected
    write_lora(lora_dir / "b" / "lora3.safetensors")
    lib = Library([lora_dir], cache_dir=tmp_path / "c")
    expected.insert(2, "b/lora3.safetensors")
    assert [e.relpath for e in lib.entries] == expected
    assert [e.relpath for e in Library([lora_dir], cache_dir=tmp_path / "c").entries] == expected


def test_a_file_given_for_a_folder_is_refused_by_name(lora_dir: Path, tmp_path: Path) -> None:
    """`Library("style.safetensors")` (or --lora-dir pointing at a file) gave an empty library and
    called the file an offline root; a missing folder stays offline (an unplugged drive)."""
    lora = write_lora(lora_dir / "style.safetensors")
    with pytest.raises(ValueError, match=r"style\.safetensors: a LoRA folder is expected here, not a file"):
        Library([lora_dir, lora], cache_dir=tmp_path / "c")
    missing = tmp_path / "unplugged"
    assert Library([lora_dir, missing], cache_dir=tmp_path / "c").refresh().offline_roots == (str(missing),)
