"""The merge's arithmetic for one weight: `combine.combined`, with float32 working memory kept from
weight to weight.

`combined` allocates its float32 product for every weight: a fresh allocation of tens of MB is
fresh pages, and on an SD1.5 merge those page faults took most of the time (the fp16/bf16 sum
itself runs in cache-sized pieces, `combine._chunked_sum`). `merged_weight` computes the same thing
with the product in a `Workspace` buffer reused for every weight, and its outputs recycled: bit for
bit the patcher's result (tests/tools compare them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from loraprompt.combine import combine_into, combined, weight_parts


class Workspace:
    """Float32 buffers reused from weight to weight (one merge's compute thread only): each grows to
    the largest weight it is asked for and stays, so the pages are touched once. Also a free list
    of written outputs (`recycle`, from the writer thread), handed out again as new weights of the
    same byte size (`output`), up to `keep` bytes: the pages of an output are then not faulted in
    anew for every weight."""

    def __init__(self, keep: int = 0) -> None:
        self._buffers: list[Tensor] = [torch.empty(0), torch.empty(0)]
        self._free: dict[int, list[Tensor]] = {}
        self._kept = 0
        self._keep = keep
        self._lock = threading.Lock()

    def output(self, like: Tensor) -> Tensor:
        """An uninitialised CPU tensor of `like`'s dtype and shape, recycled when one fits."""
        nbytes = like.numel() * like.element_size()
        with self._lock:
            free = self._free.get(nbytes)
            raw = free.pop() if free else None
            if raw is not None:
                self._kept -= nbytes
        if raw is None or like.device.type != "cpu":
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        return raw.view(like.dtype).view(like.shape)

    def recycle(self, tensor: Tensor) -> None:
        """Take back a written output (nothing else may hold it) for `output` to hand out again."""
        nbytes = tensor.numel() * tensor.element_size()
        if not nbytes or tensor.device.type != "cpu" or not tensor.is_contiguous():
            return
        with self._lock:
            if self._kept + nbytes <= self._keep:
                self._free.setdefault(nbytes, []).append(tensor.reshape(-1).view(torch.uint8))
                self._kept += nbytes

    def buffer(self, slot: int, like: Tensor) -> Tensor:
        """Float32 buffer `slot` (0 or 1) shaped like `like`, on the CPU; its contents are garbage."""
        numel = like.numel()
        if self._buffers[slot].numel() < numel:
            self._buffers[slot] = torch.empty(0)  # the old pages go before the new ones are taken
            self._buffers[slot] = torch.empty(numel, dtype=torch.float32)
        return self._buffers[slot][:numel].view(like.shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers)


def merged_weight(base_w: Tensor, base_b: Tensor | None, contributions: Sequence[tuple[Any, tuple[int, int] | None, float]],
           where: str, *, ws: Workspace, scale: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """`combine.combined(base_w, base_b, contributions, where, scale)`, the same bits, with the float32
    working memory taken from `ws`."""
    if scale is not None:
        return combined(base_w, base_b, contributions, where, scale)
    with torch.no_grad():
        w_parts, b_parts, _ = weight_parts(contributions, base_w, base_b, where)
        new_w = ws.output(base_w)
        combine_into(new_w, base_w, w_parts, scratch=lambda like: ws.buffer(0, like) if like.is_cpu
                     else torch.empty(like.shape, dtype=torch.float32, device=like.device))
        new_b = None
        if base_b is not None and b_parts:
            new_b = torch.empty_like(base_b)
            combine_into(new_b, base_b, b_parts)
        return new_w, new_b
