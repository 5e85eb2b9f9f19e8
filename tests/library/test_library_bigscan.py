"""A 10,000-file folder, scanned cold and warm. Timing lives in benchmarks/bench_scan.py; this
checks behaviour: a warm start opens no model or sidecar file, and a cold one opens each once."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from loraprompt.library import Library

N_FILES = 10_000
_opened: list[str] = []
_recording = False


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _recording and event == "open" and isinstance(args[0], str):
        _opened.append(args[0])


sys.addaudithook(_audit)


class OpenCounter:
    """Collects the paths opened while active (through the `open` audit event)."""

    def __enter__(self) -> list[str]:
        global _recording
        _opened.clear()
        _recording = True
        return _opened

    def __exit__(self, *exc: object) -> None:
        global _recording
        _recording = False


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,000 real safetensors files in 100 folders, every 10th with a `<stem>.json` and a preview."""
    root = tmp_path_factory.mktemp("big") / "Lora"
    tensor = {"lora_unet_x.lora_down.weight": np.zeros((2, 4), dtype=np.float16)}
    for i in range(N_FILES):
        folder = root / f"set{i // 100:03d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        meta = {"ss_output_name": f"out{i}", "ss_base_model_version": "sdxl_base_v1-0" if i % 2 else "sd_v1",
                "ss_tag_frequency": json.dumps({"1_x": {f"tag{i % 7}": i % 13 + 1}})}
        (folder / f"lora{i}.safetensors").write_bytes(save(tensor, metadata=meta))
        if i % 10 == 0:
            (folder / f"lora{i}.json").write_text(json.dumps({"activation text": f"word{i}"}))
            (folder / f"lora{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    past = time.time_ns() - 60 * 10**9  # settled files: the cache re-reads only seconds-old ones
    for path in root.rglob("*"):
        os.utime(path, ns=(past, past))
    return root


@pytest.fixture
def counter() -> Iterator[OpenCounter]:
    yield OpenCounter()


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "worker-processes"])
def test_cold_then_warm_scan(big_dir: Path, tmp_path: Path, counter: OpenCounter, workers: int) -> None:
    cache = tmp_path / "cache"
    with counter as opened:
        cold = Library([big_dir], cache_dir=cache, workers=workers)
    model_opens = [p for p in opened if p.endswith(".safetensors")]
    assert len(cold.entries) == N_FILES and cold.last_report.files_read == N_FILES
    if workers:  # every header was read by the children (os.open there: not this process's audit events)
        assert model_opens == []
    else:
        assert len(model_opens) == N_FILES and len(set(model_opens)) == N_FILES
    assert sum(p.endswith(".json") and str(big_dir) in p for p in opened) == N_FILES // 10

    with counter as opened:
        warm = Library([big_dir], cache_dir=cache)
        entries = warm.entries
    assert [p for p in opened if str(big_dir) in p] == []
    assert warm.last_report.files_read == 0 and entries == cold.entries
    e = entries[10]
    assert (e.name, e.alias, e.family, e.activation_text) == ("lora10", "out10", "sd1", "word10")
    assert Path(e.previews[0]).name == "lora10.png"
    assert sum(x.family == "sdxl" for x in entries) == N_FILES // 2


def test_warm_refresh_after_one_change_reads_one_file(big_dir: Path, tmp_path: Path, counter: OpenCounter) -> None:
    lib = Library([big_dir], cache_dir=tmp_path / "cache", auto_check_s=0)
    target = big_dir / "set050" / "lora5001.safetensors"
    original = target.read_bytes()
    try:
        tensor = {"w": np.ones((2, 2), dtype=np.float32)}
        target.write_bytes(save(tensor, metadata={"ss_output_name": "changed"}))
        with counter as opened:
            report = lib.refresh()
        assert report.changed == (str(target),) and report.files_read == 1
        assert [p for p in opened if p.endswith(".safetensors")] == [str(target)]
        assert lib.get(target) is not None and lib.get(target).alias == "changed"  # type: ignore[union-attr]
    finally:
        target.write_bytes(original)
