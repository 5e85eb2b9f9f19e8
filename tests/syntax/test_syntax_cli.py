"""`loraprompt parse` prints the parse as JSON through the real dispatcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraprompt.cli import main


def test_parse_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "a <lora:x:0.5> <lora:y:0,8>", "--negative", "bad <lora:z:1>"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["text"] == "a  " and [a["name"] for a in out["loras"]] == ["x"]
    assert out["negative"]["text"] == "bad <lora:z:1>" and out["negative"]["loras"] == []
    assert "weight-syntax" in captured.err and "tag-in-negative" in captured.err


def test_parse_command_a1111_profile_and_strict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["parse", "<lora:x:0.5> <lora:y:0,8>", "--profile", "a1111", "--strict"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["loras"] == [] and out["a1111_drop_all"] is True


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """`loraprompt parse ... | head -1` printed a BrokenPipeError traceback once head had gone
    (every JSON-printing command did); now it stops quietly with status 1, as Python's docs advise."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "loraprompt", "parse", "a <lora:x:0.5>"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 1
