"""Low-rank factorisation of a weight delta by SVD, by rank or by kept-energy target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from loraprompt.errors import ToolError


@dataclass(frozen=True)
class RankTarget:
    """How to choose a rank: a fixed `rank`, or the smallest rank keeping `energy` of the Frobenius norm."""

    rank: int | None = None
    energy: float | None = None
    conv_rank: int | None = None  # rank for conv kernels larger than 1x1 (defaults to `rank`)

    def __post_init__(self) -> None:
        if (self.rank is None) == (self.energy is None):
            raise ToolError("give exactly one of rank or energy")
        if self.rank is not None and self.rank < 1:
            raise ToolError(f"rank must be at least 1, got {self.rank}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ToolError(f"energy must be in (0, 1], got {self.energy}")
        if self.conv_rank is not None and self.conv_rank < 1:
            raise ToolError(f"conv rank must be at least 1, got {self.conv_rank}")

    def pick(self, singular: Tensor, conv: bool, size: int) -> int:
        """The rank to keep given the singular values (descending) of a matrix whose larger side is `size`."""
        # singular values at rounding-noise level carry nothing: dropping them is lossless
        noise = float(singular[0]) * size * torch.finfo(torch.float32).eps if singular.numel() else 0.0
        limit = max(1, int((singular > noise).sum()))
        if self.energy is None:
            wanted = self.conv_rank if conv and self.conv_rank is not None else self.rank
            return max(1, min(int(wanted or 1), limit))
        power = singular.double() ** 2
        total = float(power.sum())
        if total == 0.0:
            return 1
        kept = torch.cumsum(power, 0) / total
        reach = int(torch.searchsorted(kept, torch.tensor(self.energy**2, dtype=kept.dtype)).item()) + 1
        return max(1, min(reach, limit))


@dataclass(frozen=True)
class Factorised:
    """up @ down ≈ delta; `kept` is the fraction of delta's Frobenius norm the rank keeps."""

    up: Tensor
    down: Tensor
    kept: float


POWER_ITERATIONS = 4  # residual within 0.1% of the full SVD's optimum: tests/tools/test_svd.py
OVERSAMPLE = 16


def _orthonormal(y: Tensor) -> Tensor:
    """An orthonormal basis (float32 columns) of the numerically non-zero range of the thin `y`
    (m, k): eigh of its k x k Gram matrix in float64, applied twice (the second pass restores the
    orthogonality the first loses to float32 rounding). Only k x k LAPACK calls: a tall QR is a
    LAPACK call that runs many times slower than the matmuls when CPU threads are contended."""
    q = y
    for _ in range(2 if y.shape[1] else 0):
        qd = q.double()
        values, vectors = torch.linalg.eigh(qd.T @ qd)
        keep = values > values[-1].clamp_min(torch.finfo(torch.float64).tiny) * 1e-12
        if not bool(keep.any()):
            return q[:, :0]
        q = (qd @ (vectors[:, keep] / values[keep].sqrt())).to(y.dtype)
    return q


def _top_svd(matrix: Tensor, k: int, power_iterations: int = POWER_ITERATIONS) -> tuple[Tensor, Tensor, Tensor]:
    """The top-k singular triplets by a seeded randomized range finder with power iterations (Halko,
    Martinsson & Tropp 2011, algorithm 4.4): thin matmuls, orthonormalised by `_orthonormal`, and the
    SVD of the small k x n projection through its k x k Gram matrix in float64. The probe is drawn on
    the CPU, so every device starts from the same one. Fewer than k triplets come back when the
    matrix's rank is lower."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(matrix.shape[1], k, generator=gen, dtype=matrix.dtype).to(matrix.device)
    q = _orthonormal(matrix @ probe)
    for _ in range(power_iterations):
        q = _orthonormal(matrix @ _orthonormal(matrix.T @ q))
    if not q.shape[1]:  # a zero matrix
        return (matrix.new_zeros(matrix.shape[0], 1), matrix.new_zeros(1), matrix.new_zeros(1, matrix.shape[1]))
    small = (q.T @ matrix).double()  # (k, n): matrix ≈ q @ small
    values, vectors = torch.linalg.eigh(small @ small.T)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order].clamp_min(0), vectors[:, order]
    s = values.sqrt()
    keep = s > s[0] * 1e-7 if s.numel() else s > 0
    s, vectors = s[keep], vectors[:, keep]
    vh = (vectors.T @ small) / s[:, None]
    return (q.double() @ vectors).to(matrix.dtype), s.to(matrix.dtype), vh.to(matrix.dtype)


def _wide(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2:] != (1, 1)


def _split(svd: tuple[Tensor, Tensor, Tensor], total: float, target: RankTarget, shape: tuple[int, ...]) -> Factorised:
    """Keep the chosen rank of an SVD, split √S between up and down, reshape for convs."""
    u, s, vh = svd
    rank = target.pick(s, _wide(shape), max(u.shape[0], vh.shape[1]))
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    kept = 1.0 if total == 0.0 else min(1.0, float(s[:rank].double().pow(2).sum()) / total) ** 0.5
    if len(shape) == 4:
        up = up.reshape(shape[0], rank, 1, 1)
        down = down.reshape(rank, *shape[1:])
    return Factorised(up.contiguous(), down.contiguous(), kept)


def factorise(delta: Tensor, target: RankTarget) -> Factorised:
    """Split a float32 delta (out, in[, kh, kw]) into up (out, r[, 1, 1]) and down (r, in[, kh, kw])."""
    shape = tuple(delta.shape)
    matrix = delta.reshape(shape[0], -1).float()
    wanted = (target.conv_rank if _wide(shape) and target.conv_rank is not None else target.rank) or 0
    sketch = wanted + OVERSAMPLE
    if target.energy is None and 4 * sketch < min(matrix.shape):
        u, s, vh = _top_svd(matrix, sketch)
    else:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return _split((u, s, vh), float(torch.linalg.vector_norm(matrix, dtype=torch.float64)) ** 2, target, shape)


def factorise_product(up: Tensor, down: Tensor, target: RankTarget, shape: tuple[int, ...]) -> Factorised:
    """The same for a delta given as up (out, r) @ down (r, n), never formed: QR of both thin
    factors and an r x r SVD give its exact singular triplets."""
    qu, ru = torch.linalg.qr(up.float())
    qd, rd = torch.linalg.qr(down.float().T)
    u, s, vh = torch.linalg.svd(ru @ rd.T)
    return _split((qu @ u, s, vh @ qd.T), float(s.double().pow(2).sum()), target, shape)
