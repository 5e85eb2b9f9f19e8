"""The randomized top-k SVD used by extract (and by resize/merge of non-LoRA deltas) against the full SVD."""

from __future__ import annotations

import pytest
import torch

from loraprompt.tools.svd import RankTarget, _top_svd, factorise


def _with_spectrum(m: int, n: int, spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, spectrum.numel(), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, spectrum.numel(), generator=gen, dtype=torch.float64))
    return ((u * spectrum) @ v.T).float()


SPECTRA = {  # a LoRA-made fine-tune (rank 16 over fp16 rounding), and slowly decaying full-rank ones
    "low-rank+noise": (lambda i: torch.where(i <= 16, 1.0 / i, torch.full_like(i, 1e-4)), 1e-5),
    "1/i": (lambda i: 1.0 / i, 1e-3),
    "1/sqrt(i)": (lambda i: i**-0.5, 2e-3),
}


@pytest.mark.parametrize("name", list(SPECTRA))
@pytest.mark.parametrize(("m", "n"), [(160, 384), (640, 192)])
def test_randomized_svd_is_within_its_stated_accuracy_of_the_full_svd(name: str, m: int, n: int) -> None:
    """Rank 16 from a 32-column sketch: the squared residual exceeds the optimal (Eckart-Young) one by
    at most the stated fraction, and the singular values match the true ones."""
    make, excess = SPECTRA[name]
    i = torch.arange(1, min(m, n) + 1, dtype=torch.float64)
    a = _with_spectrum(m, n, make(i))
    exact = torch.linalg.svdvals(a.double())
    u, s, vh = _top_svd(a, 32)
    approx = (u[:, :16] * s[:16]) @ vh[:16]
    residual = float((a.double() - approx.double()).pow(2).sum())
    optimal = float(exact[16:].pow(2).sum())
    assert residual <= optimal * (1 + excess)
    torch.testing.assert_close(s[:16].double(), exact[:16], rtol=5e-3, atol=0)
    eye = torch.eye(u.shape[1])
    torch.testing.assert_close(u.T @ u, eye, rtol=0, atol=1e-5)  # orthonormal factors
    torch.testing.assert_close(vh @ vh.T, eye, rtol=0, atol=1e-5)


def test_exact_low_rank_is_recovered_exactly_and_zero_is_rank_one_zero() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(300, 3, generator=gen) @ torch.randn(3, 500, generator=gen)
    fact = factorise(a, RankTarget(rank=16))  # 4 * (16 + 16) < 300: the randomized path
    assert fact.down.shape == (3, 500) and fact.kept == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(fact.up @ fact.down, a, rtol=0, atol=1e-4)
    zero = factorise(torch.zeros(300, 500), RankTarget(rank=16))
    assert zero.up.abs().max() == 0 and zero.down.abs().max() == 0


def test_randomized_svd_is_deterministic() -> None:
    a = _with_spectrum(200, 300, torch.arange(1, 201, dtype=torch.float64) ** -1.0)
    first, second = _top_svd(a, 24), _top_svd(a, 24)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
