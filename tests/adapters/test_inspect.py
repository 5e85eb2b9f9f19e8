"""`loraprompt inspect`: format, family, ranks, module counts, metadata summary and hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.cli import main

TAGS = {"10_alice": {"alice": 12, "red hair": 7, " smile ": 3}, "5_bg": {"red hair": 2, "forest": 4}}


def _file(path: Path) -> Path:
    tensors = {}
    for i in range(3):
        base = f"lora_unet_input_blocks_{4 + i}_1_transformer_blocks_0_attn2_to_k"
        tensors[f"{base}.lora_down.weight"] = torch.randn(4, 2048)
        tensors[f"{base}.lora_up.weight"] = torch.randn(640, 4)
        tensors[f"{base}.alpha"] = torch.tensor(2.0)
    tensors["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.randn(8, 1280)
    tensors["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.randn(5120, 8)
    tensors["bundle_emb.alice.clip_l"] = torch.randn(1, 768)
    metadata = {
        "ss_tag_frequency": json.dumps(TAGS),
        "ss_base_model_version": "sdxl_base_v1-0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.title": "Alice <b>" + "x" * 500,
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path / "alice.safetensors")
    assert main(["inspect", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "kohya" and info["algorithms"] == ["lora"]
    assert info["family"] == "sdxl" and info["family_label"] == "SDXL"
    assert info["modules"] == {"text_encoder_2": 1, "unet": 3}
    assert info["ranks"] == {"4/2": 3, "8": 1}
    assert info["size"] == path.stat().st_size
    assert info["unclaimed"] == {"count": 0, "first": []}
    assert info["embeddings"] == {"alice": {"clip_l": [1, 768]}}
    assert info["trigger_words"][:3] == [{"tag": "alice", "count": 12}, {"tag": "red hair", "count": 9}, {"tag": "forest", "count": 4}]
    assert {"tag": "smile", "count": 3} in info["trigger_words"]
    assert info["metadata"]["ss_base_model_version"] == "sdxl_base_v1-0"
    assert info["modelspec"]["modelspec.title"].startswith("Alice <b>xxx") and len(info["modelspec"]["modelspec.title"]) < 300
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert info["hashes"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["hashes"]["tensor_sha256"] == hashlib.sha256(data[8 + header_len :]).hexdigest()


def test_inspect_text_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path / "alice.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x02")
    assert main(["inspect", "--no-hashes", str(path), str(tmp_path / "bad.safetensors")]) == 1
    out = capsys.readouterr()
    assert "format: kohya" in out.out and "family: SDXL" in out.out
    assert "trigger words: alice (12), red hair (9)" in out.out
    assert "bundled embeddings: alice (clip_l 1x768)" in out.out and "keys not read" not in out.out
    assert "hashes" not in out.out
    assert f"{tmp_path / 'bad.safetensors'}: file is 1 bytes" in out.err
