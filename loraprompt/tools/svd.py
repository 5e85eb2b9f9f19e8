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


def factorise(delta: Tensor, target: RankTarget) -> Factorised:
    """Split a float32 delta (out, in[, kh, kw]) into up (out, r[, 1, 1]) and down (r, in[, kh, kw])."""
    conv = delta.dim() == 4
    matrix = delta.reshape(delta.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = target.pick(s, conv and delta.shape[2:] != (1, 1), max(matrix.shape))
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    total = float(s.double().pow(2).sum())
    kept = 1.0 if total == 0.0 else float(s[:rank].double().pow(2).sum() / total) ** 0.5
    if conv:
        up = up.reshape(delta.shape[0], rank, 1, 1)
        down = down.reshape(rank, *delta.shape[1:])
    return Factorised(up.contiguous(), down.contiguous(), kept)
