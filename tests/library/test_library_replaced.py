"""A LoRA file replaced by another of the same size with its mtime kept (a retrained LoRA of the
same rank copied with `rsync -a` or `cp -p`) gives fresh hashes and metadata everywhere, never the
old file's (robustness rule 12). Two replacements: a temp file renamed over the LoRA (new inode, as
rsync does) and the file rewritten in place then its old atime/mtime set back (same inode, as
`cp -p` does; only the ctime tells). Real files written by safetensors, no mocks."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.library import Library
from loraprompt.library.hashes import file_hashes
from loraprompt.library.safetensors_header import decoded_metadata
from tests.fixtures.replace import MODES, replace_keeping_stat

from .conftest import SD1_KEYS


def _write(path: Path, seed: int, name: str, note: str) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=gen).to(torch.float16) for k, shape in SD1_KEYS.items()}
    save_file(tensors, str(path), metadata={"ss_output_name": name, "ss_network_dim": "4", "note": note})
    return path.read_bytes()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """(the LoRA in a library folder, its bytes, the bytes of its same-size replacement)."""
    src = tmp_path / "src"
    src.mkdir()
    old = _write(src / "old.safetensors", 1, "first_v1", '{"a": 1}')
    new = _write(src / "new.safetensors", 2, "other_v2", '{"b": 2}')
    assert len(old) == len(new) and old != new
    lora = tmp_path / "Lora" / "style.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(old)
    past = time.time_ns() - 3600 * 10**9  # an old file: not racy for the cache
    os.utime(lora, ns=(past, past))
    return lora, old, new


def _expected(data: bytes) -> tuple[str, str]:
    """(sha256, A1111 tensor hash) of safetensors bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(data[8 + n :]).hexdigest()


@pytest.mark.parametrize("mode", MODES)
def test_file_hashes_of_a_replaced_file_are_fresh(pair: tuple[Path, bytes, bytes], mode: str) -> None:
    lora, old, new = pair
    assert (file_hashes(lora)["sha256"], file_hashes(lora)["a1111"]) == _expected(old)  # cached by the default cache
    replace_keeping_stat(lora, new, mode)
    assert (file_hashes(lora)["sha256"], file_hashes(lora)["a1111"]) == _expected(new)


@pytest.mark.parametrize("mode", MODES)
def test_library_hashes_of_a_replaced_file_are_fresh(pair: tuple[Path, bytes, bytes], tmp_path: Path, mode: str) -> None:
    lora, old, new = pair
    lib = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    entry = lib.entries[0]
    assert (lib.hashes(entry)["sha256"], lib.hashes(entry)["a1111"]) == _expected(old)  # saved to the disk cache
    reloaded = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    assert reloaded.last_report.files_read == 0
    assert reloaded.hashes(reloaded.entries[0], compute=False)["sha256"] == _expected(old)[0]  # served from the disk
    replace_keeping_stat(lora, new, mode)
    for library in (lib, reloaded):
        assert library.hashes(entry, compute=False) == {}  # the cached hashes are the old file's
        got = library.hashes(entry)
        assert (got["sha256"], got["a1111"]) == _expected(new)
    after = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    assert after.last_report.files_read == 1  # the header is read again
    e = after.entries[0]
    assert after.known_hash(e) in (None, _expected(new)[1])
    assert (after.hashes(e)["sha256"], after.hashes(e)["a1111"]) == _expected(new)


@pytest.mark.parametrize("mode", MODES)
def test_fresh_entry_and_rescan_of_a_replaced_file(pair: tuple[Path, bytes, bytes], tmp_path: Path, mode: str) -> None:
    lora, _old, new = pair
    lib = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    entry = lib.entries[0]
    assert entry.alias == "first_v1" and entry.summary.output_name == "first_v1"
    lib.hashes(entry)
    replace_keeping_stat(lora, new, mode)
    fresh = lib.fresh(entry)
    assert fresh is not None and fresh is not entry
    assert fresh.alias == "other_v2" and fresh.summary.output_name == "other_v2" and fresh.mtime_ns == entry.mtime_ns
    assert lib.known_hash(fresh) in (None, _expected(new)[1])
    assert lib.fresh(fresh) is fresh  # unchanged since: the same entry
    report = lib.refresh()
    assert report.files_read == 0  # fresh() read it already
    assert lib.entries[0].alias == "other_v2" and lib.hashes(lib.entries[0])["a1111"] == _expected(new)[1]
    other = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    assert other.last_report.files_read == 0 and other.entries[0].alias == "other_v2"


@pytest.mark.parametrize("mode", MODES)
def test_refresh_after_a_replacement_reads_the_file_again(pair: tuple[Path, bytes, bytes], tmp_path: Path, mode: str) -> None:
    lora, _old, new = pair
    lib = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    entry = lib.entries[0]
    replace_keeping_stat(lora, new, mode)
    report = lib.refresh()
    assert report.files_read == 1 and report.changed == (str(lora),)
    e = lib.entries[0]
    assert e is not entry and e.alias == "other_v2" and e.summary.output_name == "other_v2"
    assert e.mtime_ns == entry.mtime_ns  # the date shown is the file's mtime still


@pytest.mark.parametrize("mode", MODES)
def test_decoded_metadata_of_a_replaced_file_is_fresh(pair: tuple[Path, bytes, bytes], mode: str) -> None:
    lora, _old, new = pair
    assert decoded_metadata(str(lora))["ss_output_name"] == "first_v1"
    assert decoded_metadata(str(lora))["note"] == {"a": 1}
    replace_keeping_stat(lora, new, mode)
    got = decoded_metadata(str(lora))
    assert got["ss_output_name"] == "other_v2" and got["note"] == {"b": 2}


@pytest.mark.parametrize("mode", MODES)
def test_usage_of_a_replaced_file_is_not_the_old_files(pair: tuple[Path, bytes, bytes], tmp_path: Path, mode: str) -> None:
    """The history is kept by content: a replaced file (other tensors) was never used, whether its
    hash is computed yet or not (the usage log's own note of the file's hash is for the old file)."""
    lora, _old, new = pair
    lib = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    lib.note_use([lib.entries[0]])
    assert lib.usage(lib.entries[0])[0] == 1
    replace_keeping_stat(lora, new, mode)
    lib.refresh()
    assert lib.entries[0].alias == "other_v2" and lib.usage(lib.entries[0]) == (0, 0)
    other = Library([lora.parent], cache_dir=tmp_path / "c", auto_check_s=3600)
    assert other.usage(other.entries[0]) == (0, 0)
    other.note_use([other.entries[0]])
    assert other.usage(other.entries[0])[0] == 1
