"""LoRA and LoCon: ΔW = up @ down, or the Tucker rebuild with `mid`; optional `dyn` rank cut."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class LoraModule(AdapterModule):
    """`up` (out, r[, 1, 1]), `down` (r, in[, k, k]), optional `mid` (r, r, k, k) and `bias`."""

    name: ClassVar[str] = "lora"
    required: ClassVar[frozenset[str]] = frozenset({"up", "down"})
    optional: ClassVar[frozenset[str]] = frozenset({"mid", "bias"})
    dyn: int | None = None

    @property
    def rank(self) -> int:
        return int(self.tensors["down"].shape[0])

    def fits(self, shape: tuple[int, ...]) -> bool:
        up, down = self.tensors["up"], self.tensors["down"]
        kernel = self.tensors["mid"].shape[2:] if "mid" in self.tensors else down.shape[2:]
        return up.shape[0] == shape[0] and down.shape[1] * math.prod(kernel) == math.prod(shape[1:])

    def unit_delta(self, weight: Tensor) -> Tensor:
        up = self.tensor("up", weight)
        down = self.tensor("down", weight)
        if self.dyn is not None:
            up, down = up[:, : self.dyn], down[: self.dyn]
        up2 = up.reshape(up.shape[0], -1)
        if "mid" in self.tensors:
            mid = self.tensor("mid", weight)
            return torch.einsum("ij...,pi,jr->pr...", mid, up2, down.reshape(down.shape[0], -1))
        out = up2 @ down.reshape(down.shape[0], -1)
        if weight.dim() > 2 and down.dim() == 4:
            return out.reshape(up.shape[0], *down.shape[1:])
        return out

    def bias_delta(self) -> Tensor | None:
        bias = self.tensors.get("bias")  # lora_up.bias / lora_B.bias: A1111 never reads it
        return None if bias is None or self.mode == "a1111" else bias.float() * self.scale
