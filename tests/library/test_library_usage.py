"""Usage history is kept by content: a renamed or moved file keeps it, and history written by path
(before) moves to the file's hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

from loraprompt.library import Library

from .conftest import write_lora


def test_renamed_file_keeps_its_history(tmp_path: Path) -> None:
    lora = tmp_path / "Lora"
    a = write_lora(lora / "a.safetensors", seed=1)
    write_lora(lora / "b.safetensors", seed=2)
    lib = Library(lora, tmp_path / "cache")
    lib.note_use([str(a)])
    lib.note_use([str(a)])
    (lora / "moved").mkdir()
    os.rename(a, lora / "moved" / "renamed.safetensors")
    lib.refresh()
    reopened = Library(lora, tmp_path / "cache")  # another process, reading the files on disk
    for library in (lib, reopened):
        by_name = {e.name: e for e in library.entries}
        assert library.usage(by_name["renamed"])[0] == 2  # the hash came with the rename: no file read
        assert library.usage(by_name["b"]) == (0, 0)


def test_history_kept_by_path_moves_to_the_hash(tmp_path: Path) -> None:
    lora = tmp_path / "Lora"
    a = write_lora(lora / "a.safetensors", seed=1)
    lib = Library(lora, tmp_path / "cache")
    assert lib._usage.path is not None
    lib._usage.path.write_text(json.dumps({str(a): [5, 1_700_000_000_000_000_000], "/gone.safetensors": [1, 1]}))
    lib = Library(lora, tmp_path / "cache")
    (entry,) = lib.entries
    assert lib.usage(entry) == (5, 1_700_000_000_000_000_000)  # read as it was
    assert lib.migrate_usage() == 1
    lib.note_use([entry])
    doc = json.loads(lib._usage.path.read_text())
    assert doc["by_path"] == {"/gone.safetensors": [1, 1]}  # not in this library: left as it is
    assert list(doc["by_hash"]) == [lib.hashes(entry)["a1111"]] and doc["by_hash"][lib.hashes(entry)["a1111"]][0] == 6
    os.rename(a, lora / "b.safetensors")
    lib.refresh()
    (moved,) = lib.entries
    assert lib.usage(moved)[0] == 6


def test_a_file_overwritten_since_the_scan_keeps_its_history_and_others_move(tmp_path: Path) -> None:
    """The gallery migrates history kept by path in the background: a file half overwritten since
    the scan (its header now claims more bytes than the file has) raised there and stopped the
    migration of every other file. Its history now stays by path until it can be hashed."""
    lora = tmp_path / "Lora"
    a = write_lora(lora / "a.safetensors", seed=1)
    b = write_lora(lora / "b.safetensors", seed=2)
    lib = Library(lora, tmp_path / "cache")
    assert lib._usage.path is not None
    lib._usage.path.write_text(json.dumps({str(a): [3, 1], str(b): [4, 2]}))
    lib = Library(lora, tmp_path / "cache")
    whole = a.read_bytes()
    a.write_bytes(whole[:200])  # being overwritten, its header not whole yet: no rescan
    assert lib.migrate_usage() == 1
    by_name = {e.name: e for e in lib.entries}
    lib.note_use([by_name["b"]])
    doc = json.loads(lib._usage.path.read_text())
    assert doc["by_path"] == {str(a): [3, 1]} and list(doc["by_hash"]) == [lib.hashes(by_name["b"])["a1111"]]
    a.write_bytes(whole)
    assert lib.migrate_usage() == 1


def test_a_files_hash_noted_before_its_inode_and_ctime_were_kept_still_counts(tmp_path: Path) -> None:
    """The usage log notes each used file's hash with its version: one written before that version
    held the inode and ctime ([size, mtime_ns, hash]) is still matched by size and mtime, so the
    history shows before the file is hashed again (a scan cache of an older version has no hashes)."""
    from loraprompt.library.hashes import file_version
    from loraprompt.library.usage import UsageLog

    a = write_lora(tmp_path / "Lora" / "a.safetensors", seed=1)
    path = tmp_path / "usage.json"
    version = file_version(os.stat(a))
    path.write_text(json.dumps({"version": 2, "by_hash": {"h": [3, 7]}, "by_path": {},
                                "seen": {str(a): [version[0], version[1], "h"]}}))
    log = UsageLog(path)
    assert log.hash_at(str(a), version) == "h" and log.hash_at(str(a), (version[0], version[1] + 1, *version[2:])) is None
    log.note([("h2", str(a), version)])
    assert UsageLog(path).hash_at(str(a), version) == "h2"
    assert UsageLog(path).hash_at(str(a), (*version[:3], version[3] + 1)) is None  # the same size and mtime, a new ctime
