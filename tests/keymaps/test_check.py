"""check_family: wrong family is one clear error naming both; leftovers are one summary line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.adapters import read_adapter
from loraprompt.keymaps import check_family
from tests.fixtures.loras import ToolLoraCache
from tests.keymaps.conftest import a1111_keymaps, diffusers_keymaps


@pytest.mark.parametrize(("lora_family", "model_family"), [("sdxl", "sd1"), ("sd1", "sdxl"), ("sd2", "sd1"), ("sd1", "sd2")])
def test_wrong_family_is_one_error_naming_both(tool_loras: ToolLoraCache, lora_family: str, model_family: str) -> None:
    adapter = read_adapter(tool_loras.get("kohya", lora_family).path)
    names = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
    for maps in (diffusers_keymaps(model_family), a1111_keymaps(model_family)):
        (diag,) = check_family(adapter, maps)
        assert diag.severity == "error" and diag.code == "lora-family-mismatch"
        assert f"this LoRA is for {names[lora_family]}, the loaded model is {names[model_family]}" in diag.message
        assert diag.subject == adapter.name


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_right_family_is_silent(tool_loras: ToolLoraCache, family: str) -> None:
    adapter = read_adapter(tool_loras.get("diffusers", family).path)
    assert check_family(adapter, diffusers_keymaps(family)) == []
    assert check_family(adapter, a1111_keymaps(family)) == []


def _lora(path: Path, modules: list[str]) -> Path:
    tensors = {}
    for name in modules:
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, 16)
        tensors[f"{name}.lora_up.weight"] = torch.randn(16, 2)
    save_file(tensors, str(path))
    return path


def test_unmapped_modules_are_one_warning_with_count_and_first_keys(tmp_path: Path) -> None:
    good = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    bad = [f"lora_te_text_model_encoder_layers_{i}_self_attn_q_proj" for i in range(5, 12)]
    adapter = read_adapter(_lora(tmp_path / "part.safetensors", [good, *bad]))
    assert adapter.family is None
    (diag,) = check_family(adapter, diffusers_keymaps("sd1"))
    assert diag.severity == "warning" and diag.code == "lora-unmapped"
    assert diag.message.startswith("7 of 8 modules match nothing")
    assert diag.data["unmapped"] == 7 and len(diag.data["first"]) == 5


def test_nothing_mapping_is_an_error(tmp_path: Path) -> None:
    adapter = read_adapter(_lora(tmp_path / "none.safetensors", ["lora_unet_decoder_stage_0_attn_to_q"]))
    (diag,) = check_family(adapter, diffusers_keymaps("sd1"))
    assert diag.severity == "error" and diag.code == "lora-no-match"
    assert "decoder_stage_0_attn_to_q" in diag.message


def test_a_flux_lora_on_sd1_is_refused_by_name(tmp_path: Path) -> None:
    adapter = read_adapter(_lora(tmp_path / "flux.safetensors", ["lora_unet_single_transformer_blocks_0_attn_to_q"]))
    assert adapter.family == "flux" and adapter.components() == {"transformer"}
    (diag,) = check_family(adapter, diffusers_keymaps("sd1"))
    assert diag.code == "lora-family-mismatch" and diag.message == "this LoRA is for Flux.1, the loaded model is SD1.x"


def test_modules_that_do_not_fit_are_one_error(tmp_path: Path) -> None:
    """Same module names, other widths (an unlabelled SD1-shaped LoRA on the SD2-shaped model)."""
    names = [f"lora_te_text_model_encoder_layers_{i}_self_attn_q_proj" for i in range(2)]
    adapter = read_adapter(_lora(tmp_path / "narrow.safetensors", names))
    assert adapter.family is None
    assert check_family(adapter, diffusers_keymaps("sd1")) == []
    for maps in (diffusers_keymaps("sd2"), a1111_keymaps("sd2")):
        (diag,) = check_family(adapter, maps)
        assert diag.severity == "error" and diag.code == "lora-shape-mismatch"
        assert diag.message.startswith("2 of 2 modules do not fit")
