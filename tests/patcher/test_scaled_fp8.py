"""Scaled fp8 weights (ComfyUI's scaled fp8 checkpoints: an fp8 `weight` and a float32
`scale_weight` per layer; `weight_scale`, per tensor or per row, elsewhere): dequantised with the
scale, summed in float32, requantised once with the same scale; restored bit-exactly.

The reference is diffusers' fuse of the PEFT file in float32 on the same weights, requantised with
the layer's scale: ours may differ from it only where float32 rounding of the two sums falls on
either side of an fp8 rounding boundary (one fp8 step, rarely)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from loraprompt import Patcher, read_adapter
from tests.fixtures import dit

FP8 = torch.float8_e4m3fn
LIMIT = torch.finfo(FP8).max


def scaled_fp8_flux(per_row: tuple[str, ...] = ()) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The tiny Flux transformer with every Linear weight stored as ComfyUI does (fp8 + a float32
    `scale_weight` = absmax / 448), those named in `per_row` with a per-row `weight_scale` instead;
    and the dequantised float32 weights (the model's true base)."""
    model = dit.tiny_transformer("flux")
    base = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            w = module.weight.detach().float()
            if name in per_row:
                scale = w.abs().amax(dim=1, keepdim=True) / LIMIT
                attr = "weight_scale"
            else:
                scale = w.abs().max() / LIMIT
                attr = "scale_weight"
            q = (w / scale).to(FP8)
            module.weight = nn.Parameter(q, requires_grad=False)
            module.register_parameter(attr, nn.Parameter(scale.clone(), requires_grad=False))
            base[f"{name}.weight"] = q.float() * scale
    return model, base


def _scale(module: nn.Module) -> torch.Tensor:
    return module.scale_weight if hasattr(module, "scale_weight") else module.weight_scale


def _expected(model: nn.Module, base: dict[str, torch.Tensor], fused: dict[str, torch.Tensor], float_base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Requantised reference: (dequantised base + diffusers' ΔW) / scale, saturated, to fp8."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            key = f"{name}.weight"
            delta = fused[key] - float_base[key]
            scale = _scale(module)
            out[key] = ((base[key] + delta) / scale).clamp(-LIMIT, LIMIT).to(FP8)
    return out


def _compare(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    mismatched = total = 0
    for key, want in expected.items():
        ours = state[key]
        assert ours.dtype == FP8, key
        diff = ours.float() != want.float()
        mismatched += int(diff.sum())
        total += want.numel()
        # where they differ, by one fp8 step at most (3 mantissa bits: 1/8 relative, or a subnormal step)
        gap = (ours.float() - want.float()).abs()[diff]
        bound = (want.float().abs()[diff] / 8).clamp(min=2.0**-9)
        assert bool((gap <= bound * 1.0001).all()), key
    assert mismatched <= max(2, total // 500), f"{mismatched} of {total} fp8 elements differ from the reference"


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_scaled_fp8_is_dequantised_summed_and_requantised_with_its_own_scale(tmp_path: Path, layout: str) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    path = lora.path if layout == "peft" else dit.native_file(lora, tmp_path / "kohya.safetensors", layout)
    per_row = ("transformer_blocks.0.attn.to_k", "single_transformer_blocks.1.proj_mlp")
    model, base = scaled_fp8_flux(per_row)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # diffusers' float32 fuse on the dequantised weights gives ΔW
    float_model = dit.tiny_transformer("flux")
    with torch.no_grad():
        for key, value in base.items():
            float_model.get_parameter(key).copy_(value)
    float_base = {k: v.clone() for k, v in float_model.state_dict().items()}
    fused = _fused_on(float_model, lora, 0.8)
    patcher = Patcher({"transformer": model})
    report = patcher.sync([(read_adapter(path), 0.8, 0.8)])
    assert report.diagnostics == []
    assert report.paths["transformer.transformer_blocks.0.attn.to_q.weight"] == "fp8 requantized (float8_e4m3fn, scaled)"
    assert report.paths["transformer.transformer_blocks.0.attn.to_k.weight"] == "fp8 requantized (float8_e4m3fn, scaled)"
    _compare(model, _expected(model, base, fused, float_base))
    unscaled = sum(int((model.state_dict()[k].float() != ((base[k] + fused[k] - float_base[k])).clamp(-LIMIT, LIMIT).to(FP8).float()).sum()) for k in base)
    assert unscaled > 0.5 * sum(v.numel() for v in base.values())  # ignoring the scale would be far off
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before if "scale" in k)  # scales untouched
    first = {k: v.clone() for k, v in model.state_dict().items()}
    other = dit.write_peft("flux", tmp_path / "other.safetensors", seed=7)
    patcher.sync([(read_adapter(other.path), 1.0, 1.0)])
    patcher.sync([(read_adapter(path), 0.8, 0.8)])
    assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())  # no drift across switches
    patcher.restore()
    assert all(torch.equal(v.view(torch.uint8) if v.dtype == FP8 else v, before[k].view(torch.uint8) if v.dtype == FP8 else before[k])
               for k, v in model.state_dict().items())


def _fused_on(model: nn.Module, lora: dit.PeftLora, strength: float) -> dict[str, torch.Tensor]:
    import diffusers

    mixin = diffusers.loaders.lora_pipeline.FluxLoraLoaderMixin
    state, alphas, metadata = mixin.lora_state_dict(str(lora.path), return_alphas=True, return_lora_metadata=True)
    mixin.load_lora_into_transformer(state, network_alphas=alphas, transformer=model, adapter_name="x", metadata=metadata)
    model.fuse_lora(lora_scale=strength)
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_merging_into_a_scaled_fp8_folder_equals_the_patcher(tmp_path: Path) -> None:
    from diffusers.models.model_loading_utils import load_state_dict

    from loraprompt.tools import merge_checkpoint

    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    model, _ = scaled_fp8_flux()
    root = tmp_path / "model"
    (root / "transformer").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    report = merge_checkpoint(root, [(lora.path, 1.0, 0.9)], tmp_path / "out")
    merged = load_state_dict(str(report.output / "transformer" / "diffusion_pytorch_model.safetensors"))
    Patcher({"transformer": model}).sync([(read_adapter(lora.path), 1.0, 0.9)])
    expected = model.state_dict()
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[k].view(torch.uint8), expected[k].view(torch.uint8)) if expected[k].dtype == FP8
               else torch.equal(merged[k], expected[k]) for k in expected)
    assert merged["transformer_blocks.0.attn.to_q.scale_weight"].dtype == torch.float32
