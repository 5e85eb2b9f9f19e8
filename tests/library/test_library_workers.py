"""A cold scan of thousands of new files reads their headers in worker processes
(`library.readers`): the entries, records and verdicts are exactly a serial scan's, whatever the
files hold, and a worker that fails leaves its files to the scan itself."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from loraprompt.library import Library, readers, scanner

from .conftest import SD1_KEYS, SD2_KEYS, SDXL_KEYS, kohya_metadata, write_lora
from .test_library_layouts import DIT_KEYS, METADATA


def _raw(path: Path, body: bytes, data: bytes = b"", age_s: float = 60) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    past = path.stat().st_mtime_ns - int(age_s * 1e9)
    os.utime(path, ns=(past, past))


def _library_folder(root: Path) -> None:
    """Every family and metadata shape, sidecars and previews, broken files of several kinds, a
    pickle, names that are not ASCII or not even UTF-8, in nested folders."""
    for k, keys in enumerate((SD1_KEYS, SD2_KEYS, SDXL_KEYS, DIT_KEYS)):
        for m, metadata in enumerate(METADATA):
            write_lora(root / f"set{k}" / f"lora_{m}.safetensors", metadata, keys=keys, seed=m)
    write_lora(root / "deep" / "er" / "ünï ✓.safetensors", kohya_metadata("unicode"))
    write_lora(root / "side.safetensors", kohya_metadata("side"))
    (root / "side.json").write_text('{"activation text": "cat ears", "preferred weight": 0.7}')
    (root / "side.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "old.pt").write_bytes(b"\x80\x02}q\x00.")
    for name in ("side.json", "side.png", "old.pt"):  # not seconds old: a file that new is re-read (cache.RACY_NS)
        os.utime(root / name, ns=(10**18, 10**18))
    write_lora(Path(os.fsdecode(os.fsencode(str(root)) + b"/bad\xffname.safetensors")), kohya_metadata("bytes"))
    _raw(root / "broken" / "not_json.safetensors", b"{nope")
    _raw(root / "broken" / "truncated.safetensors", b'{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}', b"\0\0")
    _raw(root / "broken" / "garbage.safetensors", b"\xff" * 40)
    (root / "broken" / "tiny.safetensors").write_bytes(b"abc")
    os.utime(root / "broken" / "tiny.safetensors", ns=(10**18, 10**18))


def _scan(root: Path, cache: Path, workers: int) -> Library:
    # no re-check when `entries` is read later: a refresh finding nothing new would replace the
    # scan's report (files_read=0) on a machine slow enough to pass Library's 2 s auto-check
    return Library(root, cache_dir=cache, workers=workers, auto_check_s=math.inf)


def test_worker_processes_give_the_serial_scans_entries(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _library_folder(lora_dir)
    serial = _scan(lora_dir, tmp_path / "serial", 0)
    assert serial.last_report.files_read == len(serial.entries) > 40
    assert sum(bool(e.error) for e in serial.entries) == 4  # the broken files are listed with their reasons

    def not_here(path: Any, layouts: Any = None) -> Any:
        assert not str(path).endswith(".safetensors"), f"read in the scanning process: {path}"
        return {"kind": "pickle", "summary": "", "family": None, "family_source": None}

    monkeypatch.setattr(scanner, "header_record", not_here)  # the workers must have read every header
    parallel = _scan(lora_dir, tmp_path / "parallel", 2)
    assert parallel.entries == serial.entries
    assert parallel.last_report == serial.last_report
    monkeypatch.undo()

    again = _scan(lora_dir, tmp_path / "parallel", 2)  # the records the workers' answers made are complete
    assert again.last_report.files_read == 0 and again.entries == serial.entries


def test_a_worker_that_fails_leaves_its_files_to_the_scan(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _library_folder(lora_dir)
    serial = _scan(lora_dir, tmp_path / "serial", 0)
    monkeypatch.setattr(readers, "WORKER_MODULE", "loraprompt.library.no_such_module")  # the child exits with 1
    assert readers.read_headers([e.path for e in serial.entries], 2) == {}
    failed = _scan(lora_dir, tmp_path / "failed", 2)
    assert failed.entries == serial.entries and failed.last_report == serial.last_report


def test_a_file_still_being_written_is_pending_with_workers_too(lora_dir: Path, tmp_path: Path) -> None:
    write_lora(lora_dir / "done.safetensors", kohya_metadata("done"))
    _raw(lora_dir / "writing.safetensors", b'{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}', b"\0", age_s=0)
    lib = _scan(lora_dir, tmp_path / "cache", 2)
    assert [e.name for e in lib.entries] == ["done"]
    assert lib.last_report.pending == (str(lora_dir / "writing.safetensors"),)


def test_how_many_workers() -> None:
    cpus = min(os.cpu_count() or 1, readers.MAX_WORKERS)
    assert readers.worker_count(readers.PARALLEL_MIN - 1, None) == 0  # a small scan: not worth a start
    assert readers.worker_count(readers.PARALLEL_MIN, None) == (cpus if cpus > 1 else 0)
    assert readers.worker_count(10, 0) == readers.worker_count(10, 1) == readers.worker_count(1, 4) == 0
    assert readers.worker_count(3, 4) == 3
