"""The merge's arithmetic for one weight: `combine.combined`, with float32 working buffers kept from
weight to weight.

`combined` allocates its float32 product for every weight, and on the CPU the fp16/bf16 sum
`torch.add(base, product, alpha=a, out=dst)` mixes dtypes, so torch makes two more full-size
float32 temporaries (the base widened, the sum before it is rounded). A fresh allocation of tens of
MB is fresh pages: on an SD1.5 merge those page faults and copies took ~3/4 of the time (122 ms of
a 160 ms weight, 10240×1280). `merged_weight` computes the same thing in `Workspace` buffers reused
for every weight: the product (`torch.mm`, as `combine._product_then_sum`), then, a cache-sized
piece at a time, the base widened into a small buffer, the same float32 `add` kernel on it (what
torch runs on its temporaries), and one rounding copy into the new weight. Bit for bit the patcher's result (tests/tools compare them);
every other case (GPU, float32 or fp8 weights, fused rows, full deltas) goes through `combine`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from loraprompt.combine import Part, combine_into, combined, stacked_factors, weight_parts

_HALF = (torch.float16, torch.bfloat16)
CHUNK = 1 << 16  # elements widened and summed at a time (256 KiB of float32)


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


def _fast(dst: Tensor, base: Tensor, parts: list[Part]) -> bool:
    """Whether combine_into takes `_product_then_sum` for these parts (whole-weight low-rank only, a
    2-byte float result) with everything on the CPU: the case `merged_weight` computes itself."""
    return (bool(parts) and dst.dtype in _HALF and dst.device.type == "cpu" and base.device.type == "cpu"
            and all(p[1] is not None and p[2] is None and p[0].device.type == "cpu" for p in parts))


def _product_then_sum(dst: Tensor, base: Tensor, parts: list[Part], ws: Workspace) -> None:
    """dst = round(base + alpha·(up@down)): the float32 product rounded, then added to the widened
    base in float32 with one rounding into dst, as combine's mixed-dtype add does on the CPU. The
    add runs in CHUNK-element pieces through a small buffer that stays in the CPU's cache (three
    passes over a 52 MB float32 buffer took 26 ms of a 10240×1280 weight, the pieces 15 ms); the
    same kernel on each element, so the same bits."""
    up, down, alpha = stacked_factors(parts)
    product = ws.buffer(0, dst)
    torch.mm(up, down, out=product.view(product.shape[0], -1))
    flat_base, flat_product, flat_dst = base.reshape(-1), product.view(-1), dst.view(-1)
    numel = flat_dst.numel()
    piece = ws.buffer(1, flat_dst[: min(numel, CHUNK)])
    for start in range(0, numel, CHUNK):
        end = min(numel, start + CHUNK)
        wide = piece[: end - start]
        wide.copy_(flat_base[start:end])
        torch.add(wide, flat_product[start:end], alpha=alpha, out=wide)
        flat_dst[start:end].copy_(wide)


def merged_weight(base_w: Tensor, base_b: Tensor | None, contributions: Sequence[tuple[Any, tuple[int, int] | None, float]],
           where: str, *, ws: Workspace, scale: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """`combine.combined(base_w, base_b, contributions, where, scale)`, the same bits, with the float32
    working memory taken from `ws`."""
    if scale is not None:
        return combined(base_w, base_b, contributions, where, scale)
    with torch.no_grad():
        w_parts, b_parts, _ = weight_parts(contributions, base_w, base_b, where)
        new_w = ws.output(base_w)
        if _fast(new_w, base_w, w_parts):
            _product_then_sum(new_w, base_w, w_parts, ws)
        else:
            combine_into(new_w, base_w, w_parts, scratch=lambda like: ws.buffer(0, like) if like.is_cpu
                         else torch.empty(like.shape, dtype=torch.float32, device=like.device))
        new_b = None
        if base_b is not None and b_parts:
            new_b = torch.empty_like(base_b)
            combine_into(new_b, base_b, b_parts)
        return new_w, new_b
