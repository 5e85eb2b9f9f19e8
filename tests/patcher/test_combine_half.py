"""The half-precision GEMM path that CUDA takes for fp16/bf16 weights (`half_gemm_into`), checked on
the exact sum: each element within one step of the weight's dtype (at the largest of the base, ΔW and
the result: the sum may cancel) and nearly every element the correctly rounded value (plain half
factors miss it on ~3%), the scale of each LoRA honoured, fused row slices written once."""

from __future__ import annotations

import gc

import pytest
import torch

from loraprompt.combine import _SPLITS, _by_rows, _disjoint, half_gemm_into


def lora(out: int, inp: int, rank: int, gen: torch.Generator, up_scale: float = 3e-3):
    """Factors of a trained LoRA's magnitudes: down ~ kaiming (0.03), up small (1e-3..1e-2)."""
    up = torch.randn(out, rank, generator=gen) * up_scale
    down = torch.randn(rank, inp, generator=gen) / inp**0.5
    return up, down


def exact(base: torch.Tensor, parts) -> torch.Tensor:
    """base + Σ scale·up@down in float64 (rows of a fused weight where given)."""
    acc = base.double().clone()
    for up, down, rows, scale in parts:
        view = acc if rows is None else acc[rows[0] : rows[1]]
        view += scale * (up.double() @ down.double())
    return acc


def one_step(dtype: torch.dtype, *values: torch.Tensor) -> torch.Tensor:
    """The spacing of `dtype` at the largest of `values`, elementwise (one ulp)."""
    top = torch.stack([v.double().abs() for v in values]).amax(0)
    return torch.clamp(top, min=torch.finfo(dtype).tiny) * torch.finfo(dtype).eps


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scales", [(0.8,), (1.0, 0.5), (0.8 / 128, 1.0, 0.3)])
def test_within_one_step_of_the_exact_sum(dtype, scales, device) -> None:
    gen = torch.Generator().manual_seed(len(scales))
    base = (torch.randn(96, 80, generator=gen) * 0.02).to(dtype)
    parts = [(*lora(96, 80, 8, gen), None, s) for s in scales]
    dst = torch.empty_like(base, device=device)
    half_gemm_into(dst, base.to(device), _by_rows([(u.to(device), d.to(device), r, s) for u, d, r, s in parts]))
    dst = dst.cpu()
    want = exact(base, parts)
    assert bool(((dst.double() - want).abs() <= one_step(dtype, want, base, want - base.double())).all())
    assert float((dst != want.to(dtype)).float().mean()) < 0.01  # almost everywhere the correctly rounded value
    other = [(u, d, r, s * 1.5) for u, d, r, s in parts]
    assert not torch.equal(dst, base) and not torch.equal(dst, exact(base, other).to(dtype))  # scales honoured


def test_fused_rows_each_written_once() -> None:
    gen = torch.Generator().manual_seed(7)
    base = (torch.randn(3 * 32, 40, generator=gen) * 0.02).to(torch.float16)
    parts = [(*lora(32, 40, 4, gen), (i * 32, (i + 1) * 32), 0.7) for i in (0, 2)]  # q and v, not k
    groups = _by_rows(parts)
    assert _disjoint(groups)
    dst = torch.full_like(base, float("nan"))
    half_gemm_into(dst, base, groups)
    assert torch.equal(dst[32:64], base[32:64])  # k untouched: the base copied over
    want = exact(base, parts)
    assert bool(((dst.double() - want).abs() <= one_step(torch.float16, want, base, want - base.double())).all())


def test_overlapping_groups_are_not_half_gemm_material() -> None:
    """A whole-weight LoRA and a row-slice one both write some elements: written in two GEMMs they
    would be rounded twice, so `combine_into` keeps the float32 path for them."""
    up, down = torch.zeros(4, 2), torch.zeros(2, 3)
    whole, sliced = (up, down, None, 1.0), (up[:2], down, (0, 2), 1.0)
    assert not _disjoint(_by_rows([whole, sliced]))
    assert not _disjoint(_by_rows([(up[:3], down, (0, 3), 1.0), (up[:2], down, (2, 4), 1.0)]))
    assert _disjoint(_by_rows([whole, whole]))


def test_plain_half_factors_would_not_do() -> None:
    """Why the factors are split: cast whole to fp16 they move a few % of the elements."""
    gen = torch.Generator().manual_seed(3)
    base = (torch.randn(128, 96, generator=gen) * 0.02).half()
    up, down = lora(128, 96, 16, gen)
    want = exact(base, [(up, down, None, 0.8)]).half()
    plain = torch.addmm(base.float(), up.half().float(), down.half().float(), alpha=0.8).half()
    split = torch.empty_like(base)
    half_gemm_into(split, base, _by_rows([(up, down, None, 0.8)]))
    assert float((plain != want).float().mean()) > 5 * float((split != want).float().mean())


def test_a_single_loras_split_lives_as_long_as_its_factors() -> None:
    gen = torch.Generator().manual_seed(4)
    base = torch.zeros(16, 8, dtype=torch.float16)
    up, down = lora(16, 8, 2, gen)
    before = len(_SPLITS)
    first, second = torch.empty_like(base), torch.empty_like(base)
    half_gemm_into(first, base, _by_rows([(up, down, None, 1.0)]))
    assert len(_SPLITS) == before + 1
    half_gemm_into(second, base, _by_rows([(up, down, None, 0.5)]))  # reused, with the new scale
    assert len(_SPLITS) == before + 1
    torch.testing.assert_close(second.float(), first.float() * 0.5, rtol=2e-3, atol=1e-7)
    del up
    gc.collect()
    assert len(_SPLITS) == before
