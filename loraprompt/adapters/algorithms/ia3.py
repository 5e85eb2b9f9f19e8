"""IA3: ΔW = W ⊙ w, scaling output rows (or input columns when `on_input`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class IA3Module(AdapterModule):
    """`weight` (a vector) and `on_input` (a flag tensor)."""

    name: ClassVar[str] = "ia3"
    required: ClassVar[frozenset[str]] = frozenset({"weight"})
    optional: ClassVar[frozenset[str]] = frozenset({"on_input"})

    @property
    def scale(self) -> float:
        return float(self.tensors["scale"]) if "scale" in self.tensors else 1.0

    def fits(self, shape: tuple[int, ...]) -> bool:
        on_input = "on_input" in self.tensors and bool(self.tensors["on_input"].flatten()[0])
        return self.tensors["weight"].numel() == shape[1 if on_input else 0]

    def unit_delta(self, weight: Tensor) -> Tensor:
        w = self.tensor("weight", weight).flatten()
        on_input = "on_input" in self.tensors and bool(self.tensors["on_input"].flatten()[0])
        axis = 1 if on_input else 0
        if weight.dim() < 2 or w.numel() != weight.shape[axis]:
            side = "input columns" if on_input else "output rows"
            raise ValueError(f"{self.lora_key}: ia3 weight of {w.numel()} values does not scale the {side} of the weight of shape {tuple(weight.shape)}")
        if on_input:
            return weight * w.reshape(1, -1, *[1] * (weight.dim() - 2))
        return weight * w.reshape(-1, *[1] * (weight.dim() - 1))
