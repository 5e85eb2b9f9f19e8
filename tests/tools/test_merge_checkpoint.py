"""merge: the merged checkpoint holds exactly the weights the patcher gives the loaded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from loraprompt.adapters import read_adapter
from loraprompt.errors import ToolError
from loraprompt.patcher import Patcher
from loraprompt.tools.io import RECIPE_KEY, load_tensors
from loraprompt.tools.merge import LoraSpec, merge_checkpoint
from tests.fixtures.loras import FAMILIES, write_diffusers_lora, write_kohya_lora, write_lycoris
from tests.tools.checkpoints import EXTRA, a1111_models, openclip_state, write_single_file


def _patched(family: str, entries: list[tuple[Path, float, float]], dtype: torch.dtype = torch.float32
             ) -> dict[str, dict[str, torch.Tensor]]:
    """The patcher's weights on the diffusers/transformers models in `dtype` (SDXL's second encoder
    then fused into OpenCLIP names, as the single file spells it)."""
    models = {c: m.to(dtype) for c, m in FAMILIES[family](seed=0).items()}
    Patcher(models).sync([(read_adapter(p), te, unet) for p, te, unet in entries])
    states = {c: m.state_dict() for c, m in models.items()}
    if family == "sdxl":
        states["text_encoder_2"] = openclip_state(states["text_encoder_2"])
    return states


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_merge_equals_patcher(tmp_path: Path, family: str) -> None:
    ckpt = tmp_path / "model.safetensors"
    keys = write_single_file(a1111_models(family), family, ckpt)
    lora = write_kohya_lora(family, tmp_path / "a.safetensors", seed=3).path
    if family == "sdxl":
        second = write_lycoris(family, tmp_path / "b.safetensors", "loha", seed=4).path
    else:
        second = write_diffusers_lora(family, tmp_path / "b.safetensors", seed=4).path
    entries = [(lora, 0.6, 0.8), (second, 1.0, -0.5)]
    report = merge_checkpoint(ckpt, [LoraSpec(*e) for e in entries], tmp_path / "merged.safetensors")
    expected = _patched(family, entries)
    merged, meta = load_tensors(report.output)
    original, _ = load_tensors(ckpt)
    assert sorted(merged) == sorted(original)
    changed = 0
    for key, (component, own) in keys.items():
        patched = expected[component][own]
        if torch.equal(patched, original[key]):
            assert torch.equal(merged[key], original[key]), key
        else:
            assert torch.equal(merged[key], patched), key
            changed += 1
    assert changed == report.weights_changed and changed > 40
    assert {"text_encoder", "unet"} <= {keys[k][0] for k in keys if not torch.equal(merged[k], original[k])}
    if family == "sdxl":
        assert any(k.endswith("in_proj_weight") and not torch.equal(merged[k], original[k]) for k in keys)
    assert torch.equal(merged[EXTRA], original[EXTRA])
    recipe = json.loads(meta[RECIPE_KEY])
    assert [(r["file"], r["te"], r["unet"]) for r in recipe["loras"]] == [("a.safetensors", 0.6, 0.8),
                                                                          ("b.safetensors", 1.0, -0.5)]
    assert meta["modelspec.title"] == "tiny"


@pytest.mark.parametrize("native", [False, True], ids=["fp32-checkpoint", "half-checkpoint"])
@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_outputs_equal_the_patcher_on_a_half_model(tmp_path: Path, name: str, dtype: torch.dtype,
                                                        native: bool) -> None:
    """fp16/bf16 output (asked for, or the checkpoint's own): the checkpoint as loaded in that dtype,
    then patched (the patcher sums in float32 from the half weight and casts once), bit for bit;
    unplanned tensors are just cast."""
    ckpt = tmp_path / "model.safetensors"
    keys = write_single_file(a1111_models("sd1"), "sd1", ckpt, dtype if native else torch.float32)
    lora = write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path
    second = write_lycoris("sd1", tmp_path / "b.safetensors", "loha", seed=4).path
    entries = [(lora, 0.7, 1.2), (second, 1.0, 0.9)]
    report = merge_checkpoint(ckpt, [LoraSpec(*e) for e in entries], tmp_path / "half.safetensors",
                              dtype=None if native else name)
    expected = _patched("sd1", entries, dtype)
    merged, _ = load_tensors(report.output)
    original, _ = load_tensors(ckpt)
    changed = 0
    for key, tensor in merged.items():
        assert tensor.dtype == dtype, key
        if key in keys:
            component, own = keys[key]
            assert torch.equal(tensor, expected[component][own]), key
            changed += not torch.equal(tensor, original[key].to(dtype))
        else:
            assert torch.equal(tensor, original[key].to(dtype)), key
    assert changed > 40 and report.weights_changed >= changed


def test_wrong_family_lora_is_refused_and_leaves_nothing(tmp_path: Path, sd1_inputs: dict[str, Path]) -> None:
    lora = write_kohya_lora("sdxl", tmp_path / "xl.safetensors", seed=3).path
    with pytest.raises(ToolError, match="SDXL"):
        merge_checkpoint(sd1_inputs["checkpoint"], [lora], tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xl.safetensors"]


def test_refuses_existing_output_without_force_and_never_the_input(tmp_path: Path, sd1_inputs: dict[str, Path]) -> None:
    ckpt, lora = sd1_inputs["checkpoint"], sd1_inputs["lora"]
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(ToolError, match="--force"):
        merge_checkpoint(ckpt, [lora], out)
    assert out.read_bytes() == b"old"
    merge_checkpoint(ckpt, [lora], out, force=True)
    with safe_open(str(out), "pt") as f:
        assert RECIPE_KEY in (f.metadata() or {})
    with pytest.raises(ToolError, match="input"):
        merge_checkpoint(ckpt, [lora], ckpt, force=True)


def test_failure_while_streaming_leaves_no_partial_file(tmp_path: Path, sd1_inputs: dict[str, Path]) -> None:
    """A LoRA module that does not fit its weight fails mid-write; the temporary file is removed."""
    from safetensors.torch import save_file

    tensors, meta = load_tensors(sd1_inputs["lora"])
    key = next(k for k in sorted(tensors) if k.startswith("lora_unet_up_blocks_3") and k.endswith("to_q.lora_down.weight"))
    tensors[key] = torch.ones(tensors[key].shape[0], tensors[key].shape[1] + 1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(ToolError, match="to_q"):
        merge_checkpoint(sd1_inputs["checkpoint"], [bad], tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
