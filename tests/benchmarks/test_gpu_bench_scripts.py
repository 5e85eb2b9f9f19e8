"""The benchmarks that `benchmarks/gpu_run.sh` runs on a lent GPU machine, run here at their
smallest sizes on the CPU: a GPU session gets one prepared run, so a benchmark broken by a
refactor must fail here, not there. Nothing is timed; only that each prints its tables, that
ours and the peer both ran, and that the peer's LoRAs really loaded."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # diffusers/peft warn when a file's keys do not all load: the peer would be timing a partial LoRA
    assert "missing keys" not in done.stderr and "unexpected keys" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def _row(out: str, label: str) -> list[str]:
    found = [line for line in out.splitlines() if line.startswith(label)]
    assert found, f"no {label!r} row in:\n{out}"
    return found[0][len(label):].split()


def test_gpu_run_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_run.sh")], check=False).returncode == 0


def test_every_test_and_benchmark_the_gpu_run_names_exists() -> None:
    """A file or test the script names that is gone makes pytest stop before running any CUDA
    test (tests/patcher/test_combine_half.py was deleted in fb8f1cb and still named here)."""
    script = (ROOT / "benchmarks" / "gpu_run.sh").read_text()
    tests = re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", script)
    modules = set(re.findall(r"-m (benchmarks\.\w+)", script))
    assert tests and modules == {"benchmarks.bench_patch", "benchmarks.bench_dit"}, (tests, modules)
    for path, test in tests:
        assert (ROOT / path).is_file(), path
        assert not test or re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.M), f"{path}::{test}"
    for module in modules:
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_bench_patch_prints_ours_the_peer_and_the_limit() -> None:
    out = _run("benchmarks.bench_patch", "--model", "tiny", "--repeat", "1", "--per-step")
    for op in ("first apply", "apply", "switch", "strength", "restore"):
        cells = _row(out, op)
        assert re.fullmatch(r"[\d.]+s", cells[0]) and re.fullmatch(r"[\d.]+s", cells[1]) and re.fullmatch(r"[\d.]+s", cells[3]), cells
    assert "0 per switch" in out  # both LoRAs' factors fit the default cache: a switch makes none
    for label in ("plain", "scheduled, unfused (loraprompt)", "fused", "unfused (peft)"):
        assert re.match(r"[\d.]+ ms", " ".join(_row(out, label))), label


def test_bench_dit_prints_steps_and_switches() -> None:
    out = _run("benchmarks.bench_dit", "--double", "1", "--single", "1", "--width", "128", "--rank", "4",
               "--repeat", "1", "--tokens", "16", "--per-step")
    for label in ("plain step", "scheduled, in the forward", "scheduled, rewritten each step", "unfused (peft)"):
        assert re.fullmatch(r"[\d.]+ms", _row(out, "  " + label)[0]), label
    for op in ("first apply", "switch", "switch (kohya, fused q/k/v)", "restore"):
        cells = _row(out, op)
        assert all(re.fullmatch(r"[\d.]+ms", c) for c in cells[:3]), cells
    assert re.search(r"switch 0, switch \(kohya, fused q/k/v\) 0", out), out


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_bench_dit_on_nf4_weights_prints_steps_and_a_switch() -> None:
    out = _run("benchmarks.bench_dit", "--double", "1", "--single", "1", "--width", "128", "--rank", "4",
               "--repeat", "1", "--tokens", "16", "--nf4")
    assert re.search(r"^18 Linears quantized to NF4$", out, re.M), out  # every Linear the LoRAs touch
    for label in ("plain step", "constant, in the forward", "scheduled, in the forward", "unfused (peft)"):
        assert re.fullmatch(r"[\d.]+ms", _row(out, "  " + label)[0]), label
    assert "rewritten each step" not in out  # NF4 is never rewritten
    assert re.search(r"switch A -> B on NF4 weights: loraprompt [\d.]+ms, peft \(unload \+ load\) [\d.]+ms", out), out
