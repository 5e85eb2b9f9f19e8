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

    def _factor_shape(self, i: int) -> tuple[int, ...] | None:
        """The shape of factor i (w_a @ w_b, or its Tucker rebuild), None when its tensors do not join."""
        wa, wb = self.tensors[f"hada_w{i}_a"].shape, self.tensors[f"hada_w{i}_b"].shape
        t = self.tensors.get(f"hada_t{i}")
        if len(wa) != 2 or len(wb) < 2:
            return None
        if t is not None:
            ok = t.dim() >= 2 and len(wb) == 2 and (t.shape[0], t.shape[1]) == (wa[0], wb[0])
            return (wa[1], wb[1], *t.shape[2:]) if ok else None
        return (wa[0], math.prod(wb[1:])) if wa[1] == wb[0] else None

    def inconsistency(self) -> str | None:
        shapes = [self._factor_shape(i) for i in (1, 2)]
        t = self.tensors
        if None in shapes or shapes[0] != shapes[1]:
            sizes = ", ".join(f"{k} {tuple(t[k].shape)}" for k in sorted(t) if k.startswith("hada_"))
            return f"the LoHa factors hada_w1 and hada_w2 do not make two products of one shape ({sizes})"
        return None

    def _factor(self, i: int, weight: Tensor) -> Tensor:
        wa, wb = self.tensor(f"hada_w{i}_a", weight), self.tensor(f"hada_w{i}_b", weight)
        if f"hada_t{i}" in self.tensors:
            return torch.einsum("ij...,jr,ip->pr...", self.tensor(f"hada_t{i}", weight), wb, wa)
        return wa @ wb.reshape(wb.shape[0], -1)

    def unit_delta(self, weight: Tensor) -> Tensor:
        return self._factor(1, weight) * self._factor(2, weight)
