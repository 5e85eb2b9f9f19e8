"""Fixtures for the library tests: real safetensors files with real metadata, written by the
`safetensors` library, in temporary folders."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

SD1_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
}
SDXL_KEYS = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": (640, 4),
    "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280),
}
SD2_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 1024),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 4),
}

WriteLora = Callable[..., Path]


def write_lora(
    path: Path,
    metadata: dict[str, str] | None = None,
    keys: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    age_s: float = 60,
) -> Path:
    """Write a small real safetensors LoRA with `metadata` and tensors of the given shapes, its
    mtime set `age_s` seconds in the past (files in a library are rarely seconds old; the cache
    re-reads those that are, see cache.RACY_NS)."""
    rng = np.random.default_rng(seed)
    tensors = {k: rng.standard_normal(shape).astype(np.float16) for k, shape in (keys or SD1_KEYS).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    past = time.time_ns() - int(age_s * 1e9)
    os.utime(path, ns=(past, past))
    return path


def kohya_metadata(output_name: str, base: str = "sd_v1", tags: dict[str, dict[str, int]] | None = None) -> dict[str, str]:
    """Metadata in the shape kohya's sd-scripts writes."""
    return {
        "ss_output_name": output_name,
        "ss_base_model_version": base,
        "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
        "ss_network_dim": "16",
        "ss_network_alpha": "8",
        "ss_resolution": "(512, 512)",
        "ss_num_epochs": "10",
        "ss_epoch": "10",
        "ss_network_module": "networks.lora",
        "ss_training_started_at": "1700000000.5",
        "ss_tag_frequency": json.dumps(tags or {"10_cat": {"cat": 30, "solo": 12, "blue eyes": 20}}),
    }


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    """An empty `models/Lora`-style folder."""
    d = tmp_path / "Lora"
    d.mkdir()
    return d
