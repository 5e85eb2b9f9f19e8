"""LoRA files for the tool tests, written by the real libraries (peft + diffusers) on the tiny models
through the one writer in tests/fixtures/loras.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.loras import write_diffusers_lora, write_kohya_lora


@pytest.fixture
def kohya_file(tmp_path: Path) -> Path:
    """A tiny SD1 kohya LoRA with sd-scripts' names (what loraprompt's convert writes back)."""
    return write_kohya_lora("sd1", tmp_path / "kohya.safetensors", seed=1, sd_scripts_names=True).path


@pytest.fixture
def diffusers_file(tmp_path: Path) -> Path:
    """A tiny SD1 LoRA saved by diffusers' save_lora_weights (lora_adapter_metadata holds alpha)."""
    return write_diffusers_lora("sd1", tmp_path / "lora_2.safetensors", seed=2).path


@pytest.fixture(scope="session")
def sd1_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only inputs shared by the merge tests: a tiny SD1 single-file checkpoint and a kohya
    LoRA for it (the tools never write over an input; copy before changing one)."""
    from tests.tools.checkpoints import a1111_models, write_single_file

    root = tmp_path_factory.mktemp("sd1_inputs")
    write_single_file(a1111_models("sd1"), "sd1", root / "model.safetensors")
    return {"checkpoint": root / "model.safetensors",
            "lora": write_kohya_lora("sd1", root / "a.safetensors", seed=3).path}
