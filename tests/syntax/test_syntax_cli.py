"""`loraprompt parse` prints the parse as JSON through the real dispatcher."""

from __future__ import annotations

import json

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
