"""Rows of an adapter module's delta, as an adapter module of their own.

A file may adapt a module that the loaded model holds as several modules stacked by rows (Flux's
fused `img_attn.qkv` is diffusers' `to_q`, `to_k`, `to_v`). Each loaded module then gets the rows
of the file module's delta that are its own. A LoRA's rows are exactly the LoRA with those rows of
`up` (the same `down`, alpha and rank), so it stays a plain low-rank LoRA; any other linear
algorithm (LoHa, LoKr, full) computes its whole delta and keeps the rows. Weight-dependent ones
(DoRA, OFT, IA3, GLoRA, T-LoRA) cannot be split: their delta depends on the whole fused weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.algorithms import LoraModule
from loraprompt.adapters.types import AdapterModule

SPLITTABLE = frozenset({"lora", "loha", "lokr", "full"})


class UnsplittableError(ValueError):
    """The module's delta depends on the whole weight: its rows cannot be applied separately."""


def row_slice(module: AdapterModule, rows: tuple[int, int], total: int) -> AdapterModule:
    """The adapter module whose delta is rows [start, stop) of `module`'s (`total` rows in all)."""
    if module.algorithm not in SPLITTABLE or module.dora_scale is not None:
        kind = "DoRA" if module.dora_scale is not None else module.algorithm
        raise UnsplittableError(
            f"{module.lora_key}: a {kind} module on a fused weight cannot be split over the loaded model's separate modules"
        )
    start, stop = rows
    if type(module) is LoraModule and "mid" not in module.tensors:
        tensors: dict[str, Any] = dict(module.tensors)
        if tensors["up"].shape[0] != total:
            raise ValueError(f"{module.lora_key}: up has {tensors['up'].shape[0]} rows, the fused weight {total}")
        tensors["up"] = tensors["up"][start:stop]
        if "bias" in tensors:
            tensors["bias"] = tensors["bias"][start:stop]
        return dataclasses.replace(module, tensors=tensors, extra={**module.extra, "rows_of": (start, stop, total), "parent": module})
    return RowSlice(
        module.component, module.path, module.algorithm, module.tensors, module.alpha, None, module.source_keys,
        {**module.extra, "rows_of": (start, stop, total), "parent": module}, module.mode, inner=module, start=start, stop=stop, total=total,
    )


@dataclass(eq=False)
class RowSlice(AdapterModule):
    """Rows [start, stop) of `inner`'s delta (`total` rows): computed whole, then sliced."""

    inner: AdapterModule | None = None
    start: int = 0
    stop: int = 0
    total: int = 0

    name: ClassVar[str] = "rows"

    def _full_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.total, *shape[1:])

    @property
    def rank(self) -> int | None:
        assert self.inner is not None
        return self.inner.rank

    @property
    def scale(self) -> float:
        assert self.inner is not None
        return self.inner.scale

    def fits(self, shape: tuple[int, ...]) -> bool:
        assert self.inner is not None
        return shape[0] == self.stop - self.start and self.inner.fits(self._full_shape(shape))

    def unit_delta(self, weight: Tensor) -> Tensor:
        assert self.inner is not None
        full = torch.zeros(self._full_shape(tuple(weight.shape)), dtype=torch.float32, device=weight.device)
        delta = self.inner.unit_delta(full)
        if delta.shape != full.shape:
            if delta.numel() != full.numel():
                raise ValueError(f"{self.lora_key}: delta of shape {tuple(delta.shape)} does not fit the fused weight {tuple(full.shape)}")
            delta = delta.reshape(full.shape)
        return delta[self.start : self.stop]

    def bias_delta(self) -> Tensor | None:
        assert self.inner is not None
        db = self.inner.bias_delta()
        return None if db is None else db.reshape(-1)[self.start : self.stop]
