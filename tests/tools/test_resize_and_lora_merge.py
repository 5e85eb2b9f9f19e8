"""resize (SVD rank change) and LoRA-into-LoRA merges, checked against the deltas of the inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraprompt.errors import ToolError
from loraprompt.tools.io import RECIPE_KEY
from loraprompt.tools.lora import read_lora
from loraprompt.tools.lora_merge import merge_loras
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.svd import RankTarget
from tests.fixtures.loras import write_kohya_lora


def _deltas(path: Path) -> dict[str, torch.Tensor]:
    return {k: m.delta() for k, m in read_lora(path).modules.items()}


def test_resize_to_full_rank_is_lossless(tmp_path: Path, kohya_file: Path) -> None:
    report = resize_lora(kohya_file, tmp_path / "r.safetensors", RankTarget(rank=4))
    before, after = _deltas(kohya_file), _deltas(report.output)
    assert sorted(before) == sorted(after)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=1e-5, atol=1e-5)
    assert report.min_kept == pytest.approx(1.0, abs=1e-6)


def test_resize_down_reports_the_kept_norm(tmp_path: Path, kohya_file: Path) -> None:
    report = resize_lora(kohya_file, tmp_path / "r.safetensors", RankTarget(rank=2), fmt="peft")
    resized = read_lora(report.output)
    assert resized.format == "peft"
    before, source = _deltas(kohya_file), read_lora(kohya_file)
    for row in report.modules:
        module = resized.modules[row.key]
        assert (row.old_rank, row.new_rank, module.rank) == (4, 2, 2)
        kept = float(module.delta().norm() / before[row.key].norm())
        assert kept == pytest.approx(row.kept, rel=1e-4)
        assert 0.0 < row.kept < 1.0
        assert module.scale == pytest.approx(source.modules[row.key].scale)
    recipe = json.loads(resized.metadata[RECIPE_KEY])
    assert recipe["tool"] == "resize" and recipe["rank"] == 2


def test_resize_by_energy_keeps_at_least_that_energy(tmp_path: Path, kohya_file: Path) -> None:
    report = resize_lora(kohya_file, tmp_path / "r.safetensors", RankTarget(energy=0.9))
    assert all(row.kept >= 0.9 - 1e-6 for row in report.modules)
    assert any(row.new_rank < row.old_rank for row in report.modules)


def test_exact_merge_equals_weighted_sum_of_deltas(tmp_path: Path, kohya_file: Path) -> None:
    other = write_kohya_lora("sd1", tmp_path / "other.safetensors", seed=7, rank=2, alpha=1.0, sd_scripts_names=True).path
    report = merge_loras([kohya_file, other], [0.7, -1.5], tmp_path / "m.safetensors")
    merged = read_lora(report.output)
    a, b = _deltas(kohya_file), _deltas(other)
    assert report.min_kept == 1.0
    for key, module in merged.modules.items():
        assert module.rank == 6
        torch.testing.assert_close(module.delta(), 0.7 * a[key] - 1.5 * b[key], rtol=1e-5, atol=1e-6)


def test_svd_merge_to_the_summed_rank_is_exact_and_lower_ranks_lose_norm(tmp_path: Path, kohya_file: Path) -> None:
    other = write_kohya_lora("sd1", tmp_path / "other.safetensors", seed=7, rank=2, alpha=1.0, sd_scripts_names=True).path
    full = merge_loras([kohya_file, other], [1.0, 1.0], tmp_path / "full.safetensors", target=RankTarget(rank=6))
    a, b = _deltas(kohya_file), _deltas(other)
    for key, module in read_lora(full.output).modules.items():
        torch.testing.assert_close(module.delta(), a[key] + b[key], rtol=1e-4, atol=1e-5)
    low = merge_loras([kohya_file, other], [1.0, 1.0], tmp_path / "low.safetensors", target=RankTarget(rank=3))
    assert low.min_kept < 1.0


def test_mismatched_inputs_fail_cleanly(tmp_path: Path, kohya_file: Path) -> None:
    with pytest.raises(ToolError, match="weights"):
        merge_loras([kohya_file], [1.0, 2.0], tmp_path / "m.safetensors")
    with pytest.raises(ToolError, match="rank"):
        RankTarget(rank=0)
    assert not (tmp_path / "m.safetensors").exists()


def test_a_fixed_rank_resize_records_that_rank_when_a_module_learned_nothing(tmp_path: Path, kohya_file: Path) -> None:
    """A module whose up is all zeros (it learned nothing) comes out at rank 1; the file then read
    ss_network_dim/ss_network_alpha "Dynamic" where kohya's resize writes the rank asked for."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(kohya_file))
    with safe_open(str(kohya_file), "pt") as f:
        metadata = f.metadata()
    up = next(k for k in tensors if k.endswith(".lora_up.weight"))
    tensors[up] = torch.zeros_like(tensors[up])
    idle = tmp_path / "idle.safetensors"
    save_file(tensors, str(idle), metadata=metadata)
    report = resize_lora(idle, tmp_path / "r.safetensors", RankTarget(rank=2))
    assert sorted({row.new_rank for row in report.modules}) == [1, 2]
    resized = read_lora(report.output)
    scale = next(iter(read_lora(kohya_file).modules.values())).scale
    assert (resized.metadata["ss_network_dim"], resized.metadata["ss_network_alpha"]) == ("2", str(scale * 2))
