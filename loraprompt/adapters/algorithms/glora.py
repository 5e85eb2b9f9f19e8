"""GLoRA: ΔW = W @ a1 @ a2 + b1 @ b2 (depends on W), LyCORIS layout."""

from __future__ import annotations

import math
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

    def inconsistency(self) -> str | None:
        """Factors that do not chain (as `unit_delta` flattens them): a1 @ a2 must be square (in, in)
        through one rank, and b1 @ b2 (or b1, bm, b2) must join; a mismatch of size 1 would otherwise
        broadcast into the weight."""
        shape = {k: tuple(v.shape) for k, v in self.tensors.items() if k in self.required | self.optional}
        if any(len(s) < 2 for s in shape.values()):
            part = next(k for k, s in sorted(shape.items()) if len(s) < 2)
            return f"the GLoRA factor {part} {shape[part]} is not a matrix"
        cols = {k: math.prod(s[1:]) for k, s in shape.items()}  # flatten(1)'s second size
        joins = [("a1", cols["a1"], "a2", shape["a2"][0], "their inner sizes differ"),
                 ("a1", shape["a1"][0], "a2", cols["a2"], "a1 @ a2 is not square")]
        if "bm" in shape:
            joins += [("b1", cols["b1"], "bm", shape["bm"][0], "their inner sizes differ"),
                      ("bm", shape["bm"][1], "b2", shape["b2"][0], "their inner sizes differ")]
        else:
            joins.append(("b1", cols["b1"], "b2", shape["b2"][0], "their inner sizes differ"))
        for a, size_a, b, size_b, what in joins:
            if size_a != size_b:
                return f"the GLoRA factors {a} {shape[a]} and {b} {shape[b]} do not join ({what})"
        return None

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
