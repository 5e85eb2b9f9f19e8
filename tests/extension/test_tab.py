"""The LoRA tab's code under A1111's gradio 3.41.2, in its own interpreter (.venv-gradio3)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from .conftest import ROOT

PYTHON = os.environ.get("LORAPROMPT_GRADIO3_PYTHON")


@pytest.mark.gradio3
@pytest.mark.skipif(not PYTHON, reason="LORAPROMPT_GRADIO3_PYTHON is not set (test.sh sets it to .venv-gradio3)")
def test_tab_builds_renders_and_serves_cards_on_gradio_3_41_2(tmp_path: Path) -> None:
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 1)},
              str(lora_dir / "style.safetensors"), metadata={"ss_base_model_version": "sd_v1"})
    result = subprocess.run(
        [str(PYTHON), str(Path(__file__).with_name("gradio3_tab.py")), str(ROOT), str(lora_dir), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout[-2000:] + result.stderr[-4000:]
