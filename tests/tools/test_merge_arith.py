"""The merge's own arithmetic (tools.arith.merged_weight, float32 buffers reused from weight to weight)
gives combine.combined's bits, the patcher's step, on every path it takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.adapters import read_adapter
from loraprompt.combine import CHUNK, _chunked_sum, combined
from loraprompt.tools.arith import Workspace, merged_weight
from loraprompt.tools.io import load_tensors
from loraprompt.tools.merge import LoraSpec, merge_checkpoint
from tests.fixtures.loras import write_kohya_lora
from tests.tools.checkpoints import a1111_models, write_single_file
from tests.tools.test_merge_checkpoint import _patched

SHAPES = {"lin": (640, 320),  # 3 pieces of CHUNK and part of one
          "odd": (333, 77), "conv": (48, 16, 3, 3), "row": (1, 5)}


def _lora(path: Path, seed: int, dtype: torch.dtype, rank: int = 8) -> dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in SHAPES.items():
        down = (rank, shape[1], *shape[2:])
        up = (shape[0], rank, *(1,) * len(shape[2:]))
        tensors[f"lora_unet_{name}.lora_down.weight"] = (torch.randn(down, generator=gen) * 0.3).to(dtype)
        tensors[f"lora_unet_{name}.lora_up.weight"] = (torch.randn(up, generator=gen) * 0.3).to(dtype)
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(rank / 3)
    save_file(tensors, str(path))
    return {name.removeprefix("unet/"): m for name, m in read_adapter(path).modules.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_merged_weight_is_combined_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    """One LoRA, two stacked LoRAs (one of them negative), large weights near the dtype's limit
    (rounding and overflow as combined does them), biases kept; one workspace for all, reused by
    weights of other shapes and sizes, so reuse cannot leak one weight into the next. float32
    weights are summed in place (no workspace)."""
    first = _lora(tmp_path / "a.safetensors", 1, torch.float16)
    second = _lora(tmp_path / "b.safetensors", 2, torch.float32, rank=4)
    ws = Workspace()
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        for name, shape in SHAPES.items():
            base = torch.randn(shape, generator=gen).to(dtype)
            base.view(-1)[::37] = torch.finfo(dtype).max / 2 if dtype != torch.float32 else 1e30
            bias = torch.randn(shape[0], generator=gen).to(dtype)
            for contributions in ([(first[name], None, 0.7)], [(first[name], None, 1.3), (second[name], None, -0.45)]):
                expected = combined(base, bias, contributions, name)
                got = merged_weight(base, bias, contributions, name, ws=ws)
                assert got[1] is None and expected[1] is None
                assert got[0].dtype == dtype and torch.equal(got[0].view(-1).view(torch.uint8),
                                                             expected[0].view(-1).view(torch.uint8)), name
    assert ws.nbytes == (0 if dtype == torch.float32 else 4 * 640 * 320)  # the largest product, kept


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("numel", [CHUNK * 3 + 1234, 7, CHUNK])
def test_chunked_sum_is_torchs_mixed_dtype_add_bit_for_bit(dtype: torch.dtype, numel: int) -> None:
    """The CPU's fp16/bf16 sum in cache-sized pieces gives exactly `torch.add(base, product, alpha,
    out=dst)` (what the GPU path runs), values near the dtype's limit rounding to inf alike."""
    gen = torch.Generator().manual_seed(numel)
    base = (torch.randn(numel, generator=gen) * 3).to(dtype)
    base[::101] = torch.finfo(dtype).max
    product = torch.randn(numel, generator=gen) * 1e-2
    product[::103] = torch.finfo(dtype).max / 4
    for alpha in (0.8, -0.37, 1.0, 1.7e-3):
        expected = torch.empty_like(base)
        torch.add(base, product, alpha=alpha, out=expected)
        got = torch.empty_like(base)
        _chunked_sum(got, base, product, alpha)
        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_checkpoint_with_plain_loras_equals_the_patcher(tmp_path: Path, dtype: torch.dtype) -> None:
    """A half checkpoint with plain (kohya) LoRAs only: every planned weight takes the reused-buffer
    path, and the file holds the patcher's weights on the model in that dtype."""
    ckpt = tmp_path / "model.safetensors"
    keys = write_single_file(a1111_models("sd1"), "sd1", ckpt, dtype)
    entries = [(write_kohya_lora("sd1", tmp_path / "a.safetensors", seed=3).path, 0.7, 1.2),
               (write_kohya_lora("sd1", tmp_path / "b.safetensors", seed=5, rank=2).path, 1.0, -0.6)]
    report = merge_checkpoint(ckpt, [LoraSpec(*e) for e in entries], tmp_path / "half.safetensors")
    expected = _patched("sd1", entries, dtype)
    merged, _ = load_tensors(report.output)
    original, _ = load_tensors(ckpt)
    changed = 0
    for key, (component, own) in keys.items():
        assert torch.equal(merged[key], expected[component][own]), key
        changed += not torch.equal(merged[key], original[key])
    assert changed > 40 and report.weights_changed == changed


def test_written_outputs_are_handed_out_again_up_to_the_kept_bytes() -> None:
    ws = Workspace(keep=1000)
    first = ws.output(torch.empty(10, 20, dtype=torch.float16))  # 400 bytes, new
    ws.recycle(first)
    again = ws.output(torch.empty(2, 50, dtype=torch.float32))  # the same 400 bytes, another dtype/shape
    assert again.data_ptr() == first.data_ptr() and again.shape == (2, 50) and again.dtype == torch.float32
    assert ws.output(torch.empty(10, 20, dtype=torch.float16)).data_ptr() != first.data_ptr()  # taken: a new one
    big = torch.empty(300, dtype=torch.float32)  # 1200 bytes: more than it keeps
    ws.recycle(big)
    assert ws.output(big).data_ptr() != big.data_ptr()
