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


def test_text_encoder_modules_get_the_names_a1111_reads(tmp_path: Path, diffusers_file: Path,
                                                         kohya_file: Path) -> None:
    """A PEFT file saved under transformers 5 names CLIP modules `text_encoder.encoder.layers.0…`
    (no `text_model.`). Written as kohya they must be `lora_te_text_model_encoder_layers_0_…`: A1111
    matches text-encoder keys only with `text_model` in them (it dropped the whole text encoder
    part before). And merged with a kohya file they are one module per weight, not two."""
    import torch

    from loraprompt.tools.io import load_tensors
    from loraprompt.tools.lora import read_lora

    out = tmp_path / "k.safetensors"
    assert main(["convert", str(diffusers_file), "--to", "kohya", "-o", str(out), "--quiet"]) == 0
    te_keys = [k for k in load_tensors(out)[0] if k.startswith("lora_te")]
    assert te_keys and all(k.startswith("lora_te_text_model_encoder_layers_") for k in te_keys)
    merged = tmp_path / "m.safetensors"
    assert main(["merge", f"{diffusers_file}:0.5", f"{kohya_file}:-0.7", "-o", str(merged), "--quiet"]) == 0
    a, b, m = read_lora(diffusers_file), read_lora(kohya_file), read_lora(merged)
    assert len(a.modules) == len(b.modules) == len(m.modules)
    for key, module in m.modules.items():
        expected = 0.5 * a.modules[key].delta() - 0.7 * b.modules[key].delta()
        torch.testing.assert_close(module.delta(), expected, rtol=1e-5, atol=1e-6)


def test_resize_rewrites_the_rank_metadata_and_drops_stale_hashes(tmp_path: Path, kohya_file: Path) -> None:
    """kohya's ss_network_dim/ss_network_alpha (the gallery's "Network dim"/"Network alpha", and
    `inspect`) said 4/8.0 after a resize to rank 2; the file's own sshs_* hashes no longer match."""
    from safetensors.torch import load_file, save_file

    from loraprompt.tools.io import load_tensors

    src = tmp_path / "hashed.safetensors"
    meta = load_tensors(kohya_file)[1]
    save_file(load_file(kohya_file), str(src), metadata={**meta, "sshs_model_hash": "ab" * 32, "sshs_legacy_hash": "cd" * 4})
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "8.0")
    out = tmp_path / "r2.safetensors"
    assert main(["resize", str(src), "--rank", "2", "-o", str(out), "--quiet"]) == 0
    tensors, written = load_tensors(out)
    assert (written["ss_network_dim"], written["ss_network_alpha"]) == ("2", "4.0")
    assert {float(t) for k, t in tensors.items() if k.endswith(".alpha")} == {4.0}
    assert "sshs_model_hash" not in written and "sshs_legacy_hash" not in written
    assert written["ss_network_module"] == "networks.lora"
    dynamic = tmp_path / "e.safetensors"
    assert main(["resize", str(src), "--energy", "0.9", "-o", str(dynamic), "--quiet"]) == 0
    ranks = {t.shape[0] for k, t in load_tensors(dynamic)[0].items() if k.endswith("lora_down.weight")}
    assert len(ranks) > 1 and load_tensors(dynamic)[1]["ss_network_dim"] == "Dynamic"


def test_merging_loras_of_two_families_names_both(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  kohya_file: Path) -> None:
    """It said 'unet/down_blocks_1_attentions_0_proj_in: inputs target different shapes', naming no file."""
    from tests.fixtures.loras import write_kohya_lora

    xl = write_kohya_lora("sdxl", tmp_path / "xl.safetensors", seed=1).path
    assert main(["merge", str(kohya_file), str(xl), "-o", str(tmp_path / "m.safetensors"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "kohya.safetensors" in err and "xl.safetensors" in err and "sd1" in err and "sdxl" in err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_a_pickle_suffix_on_the_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  sd1_inputs: dict[str, Path], suffix: str) -> None:
    """A1111, ComfyUI and diffusers choose the loader by suffix: a safetensors file named .ckpt would
    be handed to the unpickler."""
    out = tmp_path / f"merged{suffix}"
    assert main(["merge", "--checkpoint", str(sd1_inputs["checkpoint"]), str(sd1_inputs["lora"]), "-o", str(out),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"merged{suffix}" in err and "merged.safetensors" in err
    assert list(tmp_path.iterdir()) == []


def test_a_strength_that_is_not_a_number_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  sd1_inputs: dict[str, Path]) -> None:
    lora = sd1_inputs["lora"]
    for spec, bad in ((f"{lora}:abc", "abc"), (f"{lora}:abc:0.5", "abc"), (f"{lora}:0.5:x", "x")):
        assert main(["merge", spec, f"{lora}:0.5", "-o", str(tmp_path / "m.safetensors"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"strength {bad!r} is not a number" in err and "no such file" not in err.lower(), err
    assert list(tmp_path.iterdir()) == []


def test_conv_rank_without_a_rank_is_refused_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         sd1_inputs: dict[str, Path]) -> None:
    lora, ckpt = str(sd1_inputs["lora"]), str(sd1_inputs["checkpoint"])
    for args in (["resize", lora, "--energy", "0.9"], ["merge", f"{lora}:0.5", f"{lora}:0.5"],
                 ["merge", "--checkpoint", ckpt, lora]):
        assert main([*args, "--conv-rank", "2", "-o", str(tmp_path / "o.safetensors"), "--quiet"]) == 1
        assert "--conv-rank" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_extract_writes_the_rank_and_base_model_metadata_galleries_show(tmp_path: Path,
                                                                       sd1_inputs: dict[str, Path]) -> None:
    from loraprompt.library.metadata import family_from_metadata, summarize
    from loraprompt.tools.io import load_tensors

    ckpt = sd1_inputs["checkpoint"]
    merged, out = tmp_path / "merged.safetensors", tmp_path / "x.safetensors"
    assert main(["merge", "--checkpoint", str(ckpt), str(sd1_inputs["lora"]), "-o", str(merged), "--quiet"]) == 0
    assert main(["extract", str(merged), str(ckpt), "--rank", "3", "-o", str(out), "--quiet"]) == 0
    metadata = load_tensors(out)[1]
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_network_dim"] == "3" and metadata["ss_network_alpha"] == "3.0"
    assert summarize(metadata).base_model_version == "sd_v1" and family_from_metadata(metadata) == "sd1"


def test_progress_in_a_log_is_a_few_lines_not_carriage_returns(capsys: pytest.CaptureFixture[str]) -> None:
    from loraprompt.tools.io import Progress

    bar = Progress(400, "extract")
    for _ in range(400):
        bar.update()
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["extract: 0% (1/400)", "extract: 25% (100/400)", "extract: 50% (200/400)",
                                "extract: 75% (300/400)", "extract: 100% (400/400)"]
