"""LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b), each factor optionally a Tucker rebuild with t1/t2."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class LoHaModule(AdapterModule):
    """`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (+ `hada_t1`, `hada_t2` for Tucker)."""

    name: ClassVar[str] = "loha"
    required: ClassVar[frozenset[str]] = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
    optional: ClassVar[frozenset[str]] = frozenset({"hada_t1", "hada_t2"})

    @property
    def rank(self) -> int:
        return int(self.tensors["hada_w1_b"].shape[0])

    def fits(self, shape: tuple[int, ...]) -> bool:
        wa, wb = self.tensors["hada_w1_a"], self.tensors["hada_w1_b"]
        if "hada_t1" in self.tensors:
            return wa.shape[1] == shape[0] and wb.shape[1] * math.prod(self.tensors["hada_t1"].shape[2:]) == math.prod(shape[1:])
        return wa.shape[0] == shape[0] and wb.shape[1] == math.prod(shape[1:])

    def _factor(self, i: int, weight: Tensor) -> Tensor:
        wa, wb = self.tensor(f"hada_w{i}_a", weight), self.tensor(f"hada_w{i}_b", weight)
        if f"hada_t{i}" in self.tensors:
            return torch.einsum("ij...,jr,ip->pr...", self.tensor(f"hada_t{i}", weight), wb, wa)
        return wa @ wb.reshape(wb.shape[0], -1)

    def unit_delta(self, weight: Tensor) -> Tensor:
        return self._factor(1, weight) * self._factor(2, weight)
