"""A read that fails with an OSError (EIO on a network share or a USB drive) says nothing of the
file: it is shown for that scan, never cached, and the next refresh (or a new Library on the same
cache) reads the file again, as A1111 does on every scan. A format error (a bad header) stays
cached: reading the file again would give the same answer."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from loraprompt.library import Library

from .conftest import kohya_metadata, write_lora


def _fail_once(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, target: Path) -> list[str]:
    """Make `module.<name>` (a function opening files) raise EIO for `target` the first time;
    returns the list of the failures raised (one once it happened)."""
    real = getattr(module, name)
    failed: list[str] = []

    def flaky(path: Any, *args: Any, **kwargs: Any) -> Any:
        if not failed and os.fspath(path) == str(target):
            failed.append(str(path))
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return failed


def test_a_model_file_read_error_that_goes_away_is_read_again(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lora = write_lora(lora_dir / "a.safetensors", kohya_metadata("a_alias"))
    (lora_dir / "junk.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0not a header")
    os.utime(lora_dir / "junk.safetensors", ns=(1_600_000_000 * 10**9,) * 2)
    failed = _fail_once(monkeypatch, os, "open", lora)
    lib = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
    a, junk = lib.entries
    assert failed and a.error == "cannot read: Input/output error" and a.alias == "a"
    assert junk.error is not None and "header" in junk.error
    lib.refresh()  # the drive answers again
    a, junk = lib.entries
    assert a.error is None and a.alias == "a_alias" and a.family == "sd1"
    assert lib.resolve("a_alias").entry == a
    assert lib.last_report.files_read == 1  # only the file that failed; the broken header stays cached
    again = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
    assert again.entries[0].error is None and again.entries[0].alias == "a_alias" and again.last_report.files_read == 0


def test_a_new_library_reads_again_a_model_file_that_failed(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lora = write_lora(lora_dir / "a.safetensors", kohya_metadata("a_alias"))
    failed = _fail_once(monkeypatch, os, "open", lora)
    assert Library([lora_dir], cache_dir=tmp_path / "c", workers=0).entries[0].error is not None and failed
    (entry,) = Library([lora_dir], cache_dir=tmp_path / "c", workers=0).entries
    assert entry.error is None and entry.alias == "a_alias"


def _json_failing_once(lora_dir: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    """A LoRA with a settled `a.json` holding `text`, whose first open fails with EIO."""
    write_lora(lora_dir / "a.safetensors", kohya_metadata("a_alias"))
    sidecar = lora_dir / "a.json"
    sidecar.write_text(text)
    os.utime(sidecar, ns=(1_600_000_000 * 10**9,) * 2)
    return _fail_once(monkeypatch, builtins, "open", sidecar)


def test_a_user_json_read_error_that_goes_away_is_read_again(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _json_failing_once(lora_dir, monkeypatch, '{"activation text": "trig", "sd version": "SDXL"}')
    lib = Library([lora_dir], cache_dir=tmp_path / "c", workers=0)
    assert failed and lib.entries[0].user == {}
    lib.refresh()
    (entry,) = lib.entries
    assert entry.activation_text == "trig" and entry.family == "sdxl"
    assert Library([lora_dir], cache_dir=tmp_path / "c", workers=0).entries[0].activation_text == "trig"


def test_a_new_library_reads_again_a_user_json_that_failed(lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _json_failing_once(lora_dir, monkeypatch, '{"activation text": "trig"}')
    assert Library([lora_dir], cache_dir=tmp_path / "c", workers=0).entries[0].user == {} and failed
    assert Library([lora_dir], cache_dir=tmp_path / "c", workers=0).entries[0].activation_text == "trig"
