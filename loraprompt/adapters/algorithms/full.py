"""Full diff (`diff`, `diff_b`) and norm (`w_norm`, `b_norm`): the delta is stored as is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class FullModule(AdapterModule):
    """`diff` (the weight's shape) and an optional `diff_b` bias delta."""

    name: ClassVar[str] = "full"
    required: ClassVar[frozenset[str]] = frozenset({"diff"})
    optional: ClassVar[frozenset[str]] = frozenset({"diff_b"})
    weight_part: ClassVar[str] = "diff"
    bias_part: ClassVar[str] = "diff_b"

    @property
    def scale(self) -> float:
        return float(self.tensors["scale"]) if "scale" in self.tensors else 1.0

    def fits(self, shape: tuple[int, ...]) -> bool:
        return self.tensors[self.weight_part].numel() == math.prod(shape)

    def unit_delta(self, weight: Tensor) -> Tensor:
        return self.tensor(self.weight_part, weight)

    def bias_delta(self) -> Tensor | None:
        b = self.tensors.get(self.bias_part)
        return None if b is None else b.float()


@dataclass(eq=False)
class NormModule(FullModule):
    """GroupNorm/LayerNorm deltas: `w_norm` and optional `b_norm`."""

    name: ClassVar[str] = "norm"
    required: ClassVar[frozenset[str]] = frozenset({"w_norm"})
    optional: ClassVar[frozenset[str]] = frozenset({"b_norm"})
    weight_part: ClassVar[str] = "w_norm"
    bias_part: ClassVar[str] = "b_norm"
