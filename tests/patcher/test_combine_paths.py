"""How `combine_into` writes fp16/bf16 weights: the float32 product, then one mixed-dtype add that
rounds once (two kernels instead of three; the switch on a GPU is bound by kernels per weight and
bytes), checked against the exact sum; and float32 matmuls kept at full precision on CUDA even when
the host (Automatic1111) turned TF32 on."""

from __future__ import annotations

import pytest
import torch

from loraprompt.combine import _ieee_matmuls, combine_into


def lora(out: int, inp: int, rank: int, gen: torch.Generator):
    """Factors of a trained LoRA's magnitudes: down ~ kaiming, up small."""
    return torch.randn(out, rank, generator=gen) * 3e-3, torch.randn(rank, inp, generator=gen) / inp**0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scales", [(0.8,), (1.0, -0.5, 0.8 / 128)])
def test_half_weights_are_the_exact_sum_rounded_once(dtype, scales) -> None:
    gen = torch.Generator().manual_seed(len(scales))
    base = (torch.randn(128, 96, generator=gen) * 0.02).to(dtype)
    parts = [(*lora(128, 96, 16, gen), None, s) for s in scales]
    exact = base.double() + sum(s * (u.double() @ d.double()) for u, d, _, s in parts)
    dst = torch.empty_like(base)
    combine_into(dst, base, parts)
    rounded = exact.to(dtype)
    # the product is rounded to float32 before the add: at most one step off, and almost never
    assert float((dst != rounded).float().mean()) < 2e-3
    info = torch.finfo(dtype)
    step = info.eps * torch.maximum(exact.abs(), base.double().abs()).clamp(min=info.smallest_normal)
    assert bool(((dst.double() - exact).abs() <= step).all())
    assert torch.equal(combine_into_again(base, parts), dst)  # deterministic: merge == patcher


def combine_into_again(base: torch.Tensor, parts) -> torch.Tensor:
    out = torch.empty_like(base)
    combine_into(out, base, parts, lambda like: torch.full(like.shape, float("nan")))  # a dirty scratch
    return out


def test_tf32_is_off_inside_and_restored_after() -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    try:
        matmul.allow_tf32 = True  # what Automatic1111 sets at start
        with _ieee_matmuls():
            assert matmul.allow_tf32 is False
        assert matmul.allow_tf32 is True
        matmul.allow_tf32 = False
        with _ieee_matmuls():
            assert matmul.allow_tf32 is False
        assert matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before
