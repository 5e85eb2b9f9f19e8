"""GLoRA: ΔW = W @ a1 @ a2 + b1 @ b2 (depends on W), LyCORIS layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class GLoRAModule(AdapterModule):
    """`a1` (in, r), `a2` (r, in), `b1` (out, r), `b2` (r, in[, k, k]) (+ `bm` for Tucker)."""

    name: ClassVar[str] = "glora"
    required: ClassVar[frozenset[str]] = frozenset({"a1", "a2", "b1", "b2"})
    optional: ClassVar[frozenset[str]] = frozenset({"bm"})

    @property
    def rank(self) -> int:
        return int(self.tensors["a2"].shape[0])

    @property
    def scale(self) -> float:
        if self.mode == "a1111":
            return 1.0
        return super().scale

    def fits(self, shape: tuple[int, ...]) -> bool:
        return self.tensors["b1"].shape[0] == shape[0] and self.tensors["a1"].shape[0] == shape[1]

    def unit_delta(self, weight: Tensor) -> Tensor:
        b1, b2 = self.tensor("b1", weight), self.tensor("b2", weight)
        if "bm" in self.tensors:
            wb = torch.einsum("mn...,im,nj->ij...", self.tensor("bm", weight), b1.flatten(1), b2.flatten(1))
        else:
            wb = (b1.flatten(1) @ b2.flatten(1)).reshape(weight.shape)
        a1, a2 = self.tensor("a1", weight).flatten(1), self.tensor("a2", weight).flatten(1)
        wa = torch.einsum("oi...,ij->oj...", weight, a1)
        wa = torch.einsum("oi...,ij->oj...", wa, a2)
        return wb + wa
