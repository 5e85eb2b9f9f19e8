"""What --force may replace, and the outputs other tools must be able to read (found in a CLI review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraprompt.cli import main


def test_force_never_empties_a_folder_that_is_not_a_diffusers_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sd1_inputs: dict[str, Path]) -> None:
    """`merge --layout diffusers -o DIR --force` with DIR a folder of the user's files: refused,
    the files kept (it used to rename the folder away and delete it)."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "important.txt").write_text("keep me")
    args = ["merge", "--checkpoint", str(sd1_inputs["checkpoint"]), str(sd1_inputs["lora"]),
            "--layout", "diffusers", "-o", str(folder), "--force", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "models" in err and "model_index.json" in err
    assert (folder / "important.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # no staging folder left behind
    # a previous diffusers output is what --force replaces
    out = tmp_path / "merged"
    assert main([*args[:-4], "-o", str(out), "--quiet"]) == 0
    (out / "stale.txt").write_text("old run")
    assert main([*args[:-4], "-o", str(out), "--force", "--quiet"]) == 0
    assert (out / "model_index.json").exists() and not (out / "stale.txt").exists()


@pytest.mark.parametrize("command", ["convert", "merge-checkpoint", "merge-loras"])
def test_a_file_output_onto_a_folder_is_refused_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sd1_inputs: dict[str, Path], command: str) -> None:
    folder = tmp_path / "out.safetensors"
    folder.mkdir()
    lora = str(sd1_inputs["lora"])
    args = {"convert": ["convert", lora, "--to", "peft"],
            "merge-checkpoint": ["merge", "--checkpoint", str(sd1_inputs["checkpoint"]), lora],
            "merge-loras": ["merge", f"{lora}:0.5", f"{lora}:0.5"]}[command]
    assert main([*args, "-o", str(folder), "--force", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "out.safetensors" in err and "folder" in err and "Traceback" not in err
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
