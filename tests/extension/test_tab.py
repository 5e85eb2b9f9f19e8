"""The LoRA tab's code under A1111's gradio 3.41.2, in its own interpreter (.venv-gradio3)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .conftest import on_gradio3, run_on_gradio3


@on_gradio3
def test_tab_builds_renders_and_serves_cards_on_gradio_3_41_2(tmp_path: Path) -> None:
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 1)},
              str(lora_dir / "style.safetensors"), metadata={"ss_base_model_version": "sd_v1"})
    run_on_gradio3("gradio3_tab.py", lora_dir, tmp_path / "cache")
