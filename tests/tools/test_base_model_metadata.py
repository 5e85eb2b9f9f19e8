"""LoRAs the tools write say which base model they are for, in the fields A1111 reads.

A1111 v1.10.1 sorts a LoRA by kohya's `ss_base_model_version` and `ss_v2`
(extensions-builtin/Lora/network.py, NetworkOnDisk.detect_version, mirrored below): a file with
any metadata but neither counts as SD1, and its card is hidden while an SDXL or SD2 model is
loaded (ui_extra_networks_lora.py, unless "show all" is on). A diffusers SDXL LoRA converted to
kohya, or any LoRA merge, carried only the tool's recipe: an SDXL file A1111 hid under SDXL."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraprompt.tools.convert import convert_lora
from loraprompt.tools.io import load_tensors
from loraprompt.tools.lora_merge import merge_loras
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.svd import RankTarget
from tests.fixtures.loras import write_diffusers_lora


def a1111_version(metadata: dict[str, str]) -> str:
    """NetworkOnDisk.detect_version of A1111 v1.10.1."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if len(metadata) else "Unknown"


@pytest.mark.parametrize(("family", "version"), [("sdxl", "SDXL"), ("sd2", "SD2"), ("sd1", "SD1")])
def test_tool_outputs_carry_the_base_model_a1111_sorts_by(tmp_path: Path, family: str, version: str) -> None:
    a = write_diffusers_lora(family, tmp_path / "a.safetensors").path
    b = write_diffusers_lora(family, tmp_path / "b.safetensors", seed=2).path
    assert "ss_base_model_version" not in load_tensors(a)[1]  # diffusers writes none of kohya's fields
    outputs = {"convert": tmp_path / "c.safetensors", "resize": tmp_path / "r.safetensors",
               "merge": tmp_path / "m.safetensors", "merge-rank": tmp_path / "m2.safetensors"}
    convert_lora(a, outputs["convert"], "kohya")
    resize_lora(a, outputs["resize"], RankTarget(rank=2))
    merge_loras([a, b], [0.5, 0.5], outputs["merge"])
    merge_loras([a, b], [0.5, 0.5], outputs["merge-rank"], target=RankTarget(rank=2))
    for tool, path in outputs.items():
        metadata = load_tensors(path)[1]
        assert a1111_version(metadata) == version, (tool, metadata)
    merged = load_tensors(outputs["merge-rank"])[1]
    assert merged["ss_network_dim"] == "2" and merged["ss_network_module"] == "networks.lora"
