"""Hashes against hashlib over the file's own bytes."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from loraprompt.errors import AdapterFileError
from loraprompt.library.hashes import HashCache, file_hashes

from .conftest import kohya_metadata, write_lora


def test_hashes_match_hashlib(tmp_path: Path) -> None:
    p = write_lora(tmp_path / "a.safetensors", kohya_metadata("a"))
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    whole = hashlib.sha256(data).hexdigest()
    tensors = hashlib.sha256(data[8 + n :]).hexdigest()
    h = file_hashes(p, cache=HashCache())
    assert h["sha256"] == whole and h["autov2"] == whole[:10]
    assert h["tensor_sha256"] == tensors and h["autov3"] == tensors[:12]
    assert h["a1111"] == tensors and h["a1111_short"] == tensors[:12]


def test_metadata_edit_keeps_tensor_hash(tmp_path: Path) -> None:
    a = file_hashes(write_lora(tmp_path / "a.safetensors", {"x": "1"}, seed=3), cache=None)
    b = file_hashes(write_lora(tmp_path / "b.safetensors", {"x": "2", "y": "z"}, seed=3), cache=None)
    assert a["tensor_sha256"] == b["tensor_sha256"]
    assert a["sha256"] != b["sha256"]


def test_large_file_spanning_chunks(tmp_path: Path) -> None:
    p = write_lora(tmp_path / "big.safetensors", keys={"w": (1024, 1100)})
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    h = file_hashes(p, cache=None)
    assert h["tensor_sha256"] == hashlib.sha256(data[8 + n :]).hexdigest()


def test_pt_file_uses_whole_file_hash(tmp_path: Path) -> None:
    p = tmp_path / "old.pt"
    p.write_bytes(b"not really a pickle but bytes to hash")
    h = file_hashes(p, cache=None)
    assert h["a1111"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert h["tensor_sha256"] is None and h["autov3"] is None


def test_cache_is_keyed_by_stat_and_replaced_file_rehashed(tmp_path: Path) -> None:
    cache = HashCache()
    p = write_lora(tmp_path / "a.safetensors", seed=1)
    first = file_hashes(p, cache=cache)
    assert len(cache) == 1 and file_hashes(p, cache=cache) == first
    write_lora(tmp_path / "a.safetensors", seed=2)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = file_hashes(p, cache=cache)
    assert second["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest() != first["sha256"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "too short"), (b"1234567", "too short"), (struct.pack("<Q", 999) + b"{}", "larger than the file")],
)
def test_broken_safetensors_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(AdapterFileError, match=reason) as info:
        file_hashes(p, cache=None)
    assert str(p) in str(info.value)


def test_directory_and_missing_refused(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(AdapterFileError, match="directory"):
        file_hashes(tmp_path / "x.safetensors")
    with pytest.raises(AdapterFileError, match="cannot stat"):
        file_hashes(tmp_path / "missing.safetensors")


def test_a_lookup_by_hash_skips_a_file_half_overwritten_since_the_scan(tmp_path: Path) -> None:
    """`cp new.safetensors a.safetensors` in progress: only the first bytes are there. Looking up
    another file's hash (or one no file has) passes over it: no AdapterFileError naming a.safetensors."""
    from loraprompt.library import Library

    root = tmp_path / "Lora"
    a = write_lora(root / "a.safetensors", kohya_metadata("a"))
    b = write_lora(root / "b.safetensors", kohya_metadata("b"), seed=1)
    lib = Library([root], cache_dir=tmp_path / "c", persist=False, auto_check_s=3600)
    want = file_hashes(b, cache=HashCache())["a1111_short"]
    data = a.read_bytes()
    with open(a, "r+b") as f:
        f.truncate(0)
        f.write(data[:200])
    assert lib.find_by_hash("0123456789ab") == []
    assert [e.name for e in lib.find_by_hash(str(want))] == ["b"]
    found = lib.resolve("nonexistent", hash="0123456789ab")
    assert found.entry is None and "a.safetensors" not in " ".join(d.message for d in found.diagnostics)
    assert lib.resolve("gone", hash=str(want)).entry.name == "b"  # type: ignore[union-attr]
