"""LoKr: ΔW = kron(W1, W2), each side full or low-rank, W2 optionally a Tucker rebuild."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class LoKrModule(AdapterModule):
    """`lokr_w1` or `lokr_w1_a`+`lokr_w1_b`; `lokr_w2` or `lokr_w2_a`+`lokr_w2_b` (+ `lokr_t2`)."""

    name: ClassVar[str] = "lokr"
    required: ClassVar[frozenset[str]] = frozenset()
    optional: ClassVar[frozenset[str]] = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"})

    @classmethod
    def accepts(cls, parts: set[str]) -> bool:
        """Both halves present, each either full or as a complete a/b pair."""
        one = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts
        two = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts
        return one and two and parts <= cls.optional

    @property
    def rank(self) -> int | None:
        """LyCORIS divides by the first decomposed side's rank; A1111 looks at W2 first."""
        sides = ("lokr_w2", "lokr_w1") if self.mode == "a1111" else ("lokr_w1", "lokr_w2")
        for side in sides:
            if side not in self.tensors:
                return int(self.tensors[f"{side}_b"].shape[0])
        return None

    @property
    def scale(self) -> float:
        if "scale" in self.tensors:
            return float(self.tensors["scale"])
        if self.rank is None:
            return 1.0
        return super().scale

    def _half_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        t = self.tensors
        w1 = tuple(t["lokr_w1"].shape) if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        if "lokr_w2" in t:
            w2 = tuple(t["lokr_w2"].shape)
        elif "lokr_t2" in t:
            w2 = (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
        else:
            w2 = (t["lokr_w2_a"].shape[0], *t["lokr_w2_b"].shape[1:])
        return w1, w2

    def inconsistency(self) -> str | None:
        t = self.tensors
        joins = [] if "lokr_w1" in t else [("lokr_w1_a", 1, "lokr_w1_b", 0)]
        if "lokr_w2" not in t:
            joins += ([("lokr_t2", 0, "lokr_w2_a", 0), ("lokr_t2", 1, "lokr_w2_b", 0)] if "lokr_t2" in t
                      else [("lokr_w2_a", 1, "lokr_w2_b", 0)])
        for a, i, b, j in joins:
            if t[a].dim() <= i or t[b].dim() <= j or t[a].shape[i] != t[b].shape[j]:
                return (f"the LoKr factors {a} {tuple(t[a].shape)} and {b} {tuple(t[b].shape)} do not join "
                        "(their inner sizes differ)")
        return None

    def fits(self, shape: tuple[int, ...]) -> bool:
        w1, w2 = self._half_shapes()
        return w1[0] * w2[0] == shape[0] and math.prod(w1[1:]) * math.prod(w2[1:]) == math.prod(shape[1:])

    def unit_delta(self, weight: Tensor) -> Tensor:
        t = self.tensors
        w1 = self.tensor("lokr_w1", weight) if "lokr_w1" in t else self.tensor("lokr_w1_a", weight) @ self.tensor("lokr_w1_b", weight)
        if "lokr_w2" in t:
            w2 = self.tensor("lokr_w2", weight)
        elif "lokr_t2" in t:
            w2 = torch.einsum("ij...,ip,jr->pr...", self.tensor("lokr_t2", weight), self.tensor("lokr_w2_a", weight), self.tensor("lokr_w2_b", weight))
        else:
            w2b = self.tensor("lokr_w2_b", weight)
            w2 = (self.tensor("lokr_w2_a", weight) @ w2b.reshape(w2b.shape[0], -1)).reshape(-1, *w2b.shape[1:])
        while w1.dim() < w2.dim():
            w1 = w1.unsqueeze(-1)
        return torch.kron(w1, w2.contiguous())
