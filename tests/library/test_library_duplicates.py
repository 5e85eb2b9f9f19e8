"""Duplicate finding reads in full only the files whose sampled first pass matches another's:
real safetensors files of the same size (as LoRAs of one rank and layout are)."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

from loraprompt.library import Library
from loraprompt.library.duplicates import sample_hash

from .conftest import write_lora

BIG = {"w": (64, 1024)}  # 128 KiB of float16 data: room between the 4 KiB samples


def _groups(lib: Library, progress: list[tuple[int, int]] | None = None) -> set[tuple[str, tuple[str, ...]]]:
    found = lib.duplicates(progress=(lambda done, total: progress.append((done, total))) if progress is not None else None)
    return {(g.kind, tuple(sorted(e.relpath for e in g.entries))) for g in found}


def _by_name(lib: Library) -> dict[str, object]:
    return {e.relpath: e for e in lib.entries}


def test_same_size_files_with_other_samples_are_not_read_in_full(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    paths = [write_lora(root / f"{n}.safetensors", {"x": "1"}, seed=i, keys=BIG) for i, n in enumerate("abcd")]
    (root / "e.safetensors").write_bytes(paths[0].read_bytes())
    os.utime(root / "e.safetensors", ns=(os.stat(paths[0]).st_mtime_ns,) * 2)
    assert len({p.stat().st_size for p in root.iterdir()}) == 1  # every file is a candidate
    lib = Library([root], cache_dir=tmp_path / "c")
    progress: list[tuple[int, int]] = []
    assert _groups(lib, progress) == {("same-file", ("a.safetensors", "e.safetensors"))}
    hashed = {e.relpath for e in lib.entries if lib.hashes(e, compute=False)}
    assert hashed == {"a.safetensors", "e.safetensors"}  # b, c and d were only sampled
    assert progress == [(i, 5) for i in range(1, 6)] + [(1, 2), (2, 2)]  # five sampled, then two read in full
    # the samples are kept with the cache records: a new process finds the same groups
    again = Library([root], cache_dir=tmp_path / "c")
    assert _groups(again) == {("same-file", ("a.safetensors", "e.safetensors"))}
    assert {e.relpath for e in again.entries if again.hashes(e, compute=False)} == hashed


def _change_between_samples(path: Path) -> None:
    """Flip one byte of the tensor data where no sample reads; keep the mtime in the past."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 20_000] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns))


def test_files_that_differ_only_between_the_samples_are_told_apart_by_the_full_hash(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    one = write_lora(root / "x.safetensors", {"x": "1"}, seed=7, keys=BIG)
    two = write_lora(root / "other" / "x.safetensors", {"x": "1"}, seed=7, keys=BIG)
    same = write_lora(root / "y.safetensors", {"x": "1"}, seed=7, keys=BIG)
    _change_between_samples(two)
    (n,) = struct.unpack("<Q", one.read_bytes()[:8])
    assert sample_hash(str(one), 8 + n) == sample_hash(str(two), 8 + n) == sample_hash(str(same), 8 + n)
    assert one.read_bytes() != two.read_bytes() and one.read_bytes() == same.read_bytes()
    lib = Library([root], cache_dir=tmp_path / "c")
    assert _groups(lib) == {
        ("same-file", ("x.safetensors", "y.safetensors")),
        ("same-name", ("other/x.safetensors", "x.safetensors")),
    }
    assert all(lib.hashes(e, compute=False) for e in lib.entries)  # all three read in full


def test_same_name_with_other_samples_needs_no_full_read(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    write_lora(root / "style.safetensors", {"x": "1"}, seed=1, keys=BIG)
    write_lora(root / "v2" / "style.safetensors", {"x": "1"}, seed=2, keys=BIG)
    lib = Library([root], cache_dir=tmp_path / "c")
    assert _groups(lib) == {("same-name", ("style.safetensors", "v2/style.safetensors"))}
    assert not any(lib.hashes(e, compute=False) for e in lib.entries)


def test_a_stop_during_the_sampled_pass_ends_it_without_full_reads(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    paths = [write_lora(root / f"{n}.safetensors", {"x": "1"}, seed=i, keys=BIG) for i, n in enumerate("abcd")]
    (root / "e.safetensors").write_bytes(paths[0].read_bytes())
    os.utime(root / "e.safetensors", ns=(os.stat(paths[0]).st_mtime_ns,) * 2)
    lib = Library([root], cache_dir=tmp_path / "c")
    stop, seen = threading.Event(), []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        stop.set()  # as the gallery does when it shuts down, here after the first sample

    assert lib.duplicates(progress, stop) == []
    assert seen == [(1, 5)] and not any(lib.hashes(e, compute=False) for e in lib.entries)
    assert _groups(lib) == {("same-file", ("a.safetensors", "e.safetensors"))}  # a later run finishes
