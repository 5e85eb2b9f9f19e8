"""The four tool commands through `loraprompt.cli.main`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraprompt.cli import main
from loraprompt.tools.cli import parse_lora_spec
from loraprompt.tools.io import load_tensors
from loraprompt.tools.lora import read_lora


@pytest.mark.parametrize(("text", "expected"), [
    ("a.safetensors", ("a.safetensors", 1.0, 1.0)),
    ("a.safetensors:0.5", ("a.safetensors", 0.5, 0.5)),
    ("a.safetensors:0.5:-1", ("a.safetensors", 0.5, -1.0)),
    ("C:/loras/a.safetensors:0.7", ("C:/loras/a.safetensors", 0.7, 0.7)),
])
def test_lora_spec(text: str, expected: tuple[str, float, float]) -> None:
    assert parse_lora_spec(text) == expected


def test_convert_resize_merge_extract_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           sd1_inputs: dict[str, Path]) -> None:
    lora = sd1_inputs["lora"]
    peft = tmp_path / "a_peft.safetensors"
    assert main(["convert", str(lora), "--to", "peft", "-o", str(peft)]) == 0
    assert read_lora(peft).format == "peft"
    assert "wrote" in capsys.readouterr().out
    small = tmp_path / "small.safetensors"
    assert main(["resize", str(peft), "--rank", "2", "-o", str(small), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {m["new_rank"] for m in report["modules"]} == {2}
    both = tmp_path / "both.safetensors"
    assert main(["merge", f"{lora}:0.5", f"{small}:0.5", "-o", str(both), "--quiet"]) == 0
    assert {m.rank for m in read_lora(both).modules.values()} == {6}
    ckpt = sd1_inputs["checkpoint"]
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", "--checkpoint", str(ckpt), f"{lora}:1:0.5", "-o", str(merged), "--dtype", "fp16",
                 "--quiet"]) == 0
    assert "weights_changed" in capsys.readouterr().out
    assert all(t.dtype == torch.float16 for t in load_tensors(merged)[0].values())
    out = tmp_path / "x.safetensors"
    assert main(["extract", str(merged), str(ckpt), "--rank", "4", "--min-diff", "1e-2", "-o", str(out),
                 "--quiet"]) == 0
    assert all(m.rank <= 4 for m in read_lora(out).modules.values())


def test_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       sd1_inputs: dict[str, Path]) -> None:
    lora = sd1_inputs["lora"]
    out = tmp_path / "b.safetensors"
    out.write_bytes(b"x")
    assert main(["convert", str(lora), "--to", "peft", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "b.safetensors" in err and "--force" in err
    missing = tmp_path / "nope.safetensors"
    assert main(["resize", str(missing), "--rank", "2", "-o", str(tmp_path / "c.safetensors")]) == 1
    assert "nope.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()
