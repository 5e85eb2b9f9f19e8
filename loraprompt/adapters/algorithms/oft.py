"""OFT (block-diagonal rotation, Cayley) and BOFT (butterfly stages), LyCORIS conventions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.types import AdapterModule


def cayley(blocks: Tensor, constraint: float) -> Tensor:
    """R = (I + Q)(I − Q)⁻¹ with Q = B − Bᵀ, ‖Q‖ clamped to `constraint` when it is positive."""
    eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.norm(q) + 1e-8
        if norm > constraint:
            q = q * constraint / norm
    return (eye + q) @ torch.linalg.inv(eye - q)


@dataclass(eq=False)
class OFTModule(AdapterModule):
    """`blocks` (n, b, b) (kohya/LyCORIS `oft_blocks`) or `diag` (old LyCORIS R), optional `rescale`."""

    name: ClassVar[str] = "oft"
    required: ClassVar[frozenset[str]] = frozenset()
    optional: ClassVar[frozenset[str]] = frozenset({"blocks", "diag", "rescale"})

    @classmethod
    def accepts(cls, parts: set[str]) -> bool:
        """Exactly one of the rotation tensors."""
        return ("blocks" in parts) != ("diag" in parts) and parts <= cls.optional

    @property
    def scale(self) -> float:
        return 1.0

    @property
    def linear(self) -> bool:
        return "rescale" not in self.tensors and self.dora_scale is None

    def fits(self, shape: tuple[int, ...]) -> bool:
        blocks = self.tensors["diag"] if "diag" in self.tensors else self.tensors["blocks"]
        return blocks.shape[-3] * blocks.shape[-1] == shape[0]

    def rotation(self, weight: Tensor) -> Tensor:
        """The per-block rotation R, shape (n, b, b)."""
        if "diag" in self.tensors:
            return self.tensor("diag", weight)
        constraint = (self.alpha or 0.0) * weight.shape[0]
        return cayley(self.tensor("blocks", weight), constraint)

    def unit_delta(self, weight: Tensor) -> Tensor:
        r = self.rotation(weight)
        n, b, _ = r.shape
        if n * b != weight.shape[0]:
            raise ValueError(f"{self.lora_key}: OFT blocks {tuple(r.shape)} do not fit the weight of shape {tuple(weight.shape)}")
        eye = torch.eye(b, device=weight.device)
        blocks = weight.reshape(n, b, *weight.shape[1:])
        return torch.einsum("knm,kn...->km...", r - eye, blocks).reshape(weight.shape)

    def delta(self, weight: Tensor, strength: float, bias: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """With `rescale`, W' = rescale·(W + s·(R−I)W): the rescale is not scaled by strength."""
        if "rescale" not in self.tensors or self.dora_scale is not None:
            return super().delta(weight, strength, bias)
        w = weight.float()
        rescale = self.tensor("rescale", w).reshape(-1, *[1] * (w.dim() - 1))
        return rescale * strength * self.unit_delta(w) + (rescale - 1) * w, None


@dataclass(eq=False)
class BOFTModule(OFTModule):
    """Butterfly OFT: `blocks` of shape (m, n, b, b), m stages. LyCORIS bends every stage towards
    identity by the strength; A1111 scales the finished W' − W linearly."""

    name: ClassVar[str] = "boft"

    @classmethod
    def accepts(cls, parts: set[str]) -> bool:
        """Claimed by shape (4-D `blocks`) in the reader, never by names alone."""
        return False

    @property
    def linear(self) -> bool:
        return self.mode == "a1111" and self.dora_scale is None

    def butterfly(self, weight: Tensor, strength: float) -> Tensor:
        """W' (before rescale) with every stage interpolated towards identity by `strength`."""
        blocks = self.tensor("blocks", weight)
        m, _, b, _ = blocks.shape
        eye = torch.eye(b, device=weight.device)
        r = cayley(blocks, (self.alpha or 0.0) * weight.shape[0])
        x = weight
        half = b // 2
        for i in range(m):
            bi = r[i] * strength + (1 - strength) * eye
            k = 2**i * half
            x = x.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, b))
            x = torch.einsum("bij,bj...->bi...", bi, x)
            x = x.flatten(0, 1).unflatten(0, (-1, k, 2)).transpose(1, 2).flatten(0, 2)
        return x

    def _rotated(self, weight: Tensor, strength: float) -> Tensor:
        out = self.butterfly(weight, strength)
        if "rescale" in self.tensors:
            out = out * self.tensor("rescale", weight).reshape(-1, *[1] * (weight.dim() - 1))
        return out

    def unit_delta(self, weight: Tensor) -> Tensor:
        return self._rotated(weight, 1.0) - weight

    def delta(self, weight: Tensor, strength: float, bias: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """LyCORIS: the strength acts inside every stage, so it bypasses the linear finishing step."""
        if self.mode == "a1111":
            return super(OFTModule, self).delta(weight, strength, bias)
        w = weight.float()
        return self._rotated(w, strength) - w, None
