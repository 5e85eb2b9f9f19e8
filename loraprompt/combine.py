"""The last step of patching one weight: base + Σ strength·Δ, summed in float32 and cast once.

`weight_parts` computes and checks the float32 parts of one weight's contributions, `combine_into`
writes base + parts into a tensor, and `combined` does both into new tensors. `Patcher.sync` (in
place, with its caches and scratch buffer) and the merge tool (streaming a file) both go through
them, so a merged checkpoint is bit-identical to the patched model of the same dtype."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.cache import lowrank_factors
from loraprompt.errors import PatchError

if TYPE_CHECKING:
    from torch import Tensor

    from loraprompt.adapters.types import AdapterModule
    from loraprompt.cache import DeltaCache

# (float32 ΔW, or up when `down` follows; down or None; rows of a fused parameter or None; scale)
Part = tuple["Tensor", "Tensor | None", "tuple[int, int] | None", float]
Scratch = Callable[["Tensor"], "Tensor"]


def module_error(module: AdapterModule, where: str, reason: str) -> PatchError:
    """A PatchError naming the adapter module and the weight; `.module` tells whose it is."""
    error = PatchError(f"{module.lora_key} -> {where}: {reason}; nothing applied")
    error.module = module  # type: ignore[attr-defined]
    return error


def weight_parts(
    contributions: Sequence[tuple[Any, tuple[int, int] | None, float]], base_w: Tensor, base_b: Tensor | None,
    where: str, cache: DeltaCache | None = None, *, device: torch.device | None = None,
) -> tuple[list[Part], list[Part], bool]:
    """Validated float32 (weight parts, bias parts) of `contributions` ((adapter module, rows or
    None, strength), as in a plan) on the base weight and bias, on `device` (default: the base's;
    the patcher's backups may live in host memory while the weight is on the GPU), and whether
    `cache` holds every full delta among them. A plain LoRA gives its factors (written with one addmm); another
    algorithm its full delta, unit-strength for linear ones (scaled when written)."""
    device = device or base_w.device
    base32: list[Tensor | None] = [None, None]
    w_parts: list[Part] = []
    b_parts: list[Part] = []
    kept = True
    for module, rows, strength in contributions:
        target = base_w if rows is None else base_w[rows[0] : rows[1]]
        try:
            factors = cache.factors(module, target, device) if cache is not None else lowrank_factors(module, target, device)
        except ValueError as exc:
            raise module_error(module, where, str(exc)) from exc
        if factors is not None:
            up, down, db = factors
            w_parts.append((up, down, rows, strength))
            if db is not None:
                b_parts.append((db, None, rows, strength))
            continue
        linear = module.linear
        cache_key = (module, rows, device) if linear else (module, rows, device, strength)
        hit = cache.get(cache_key) if cache is not None else None
        if hit is None:
            if base32[0] is None:
                base32 = [base_w.to(device, torch.float32), base_b.to(device, torch.float32) if base_b is not None else None]
            hit = _delta(module, where, rows, 1.0 if linear else strength, base32)
            kept = (cache is not None and cache.put(cache_key, *hit)) and kept
        scale = strength if linear else 1.0
        if hit[0] is not None:
            w_parts.append((hit[0], None, rows, scale))
        if hit[1] is not None:
            b_parts.append((hit[1], None, rows, scale))
    if b_parts and base_b is None:
        raise module_error(contributions[0][0], where, "has a bias delta but the module has no bias")
    return w_parts, b_parts, kept


def _delta(
    module: AdapterModule, where: str, rows: tuple[int, int] | None, strength: float, base32: list[Tensor | None],
) -> tuple[Tensor | None, Tensor | None]:
    w, b = base32
    assert w is not None
    if rows is not None:
        w = w[rows[0] : rows[1]]
        b = b[rows[0] : rows[1]] if b is not None else None
    try:
        dw, db = module.delta(w, strength, b)
    except (ValueError, RuntimeError) as exc:
        raise module_error(module, where, str(exc)) from exc
    if dw is not None and dw.shape != w.shape:
        raise module_error(module, where, f"delta shape {tuple(dw.shape)} != weight shape {tuple(w.shape)}")
    if db is not None and (b is None or db.shape != b.shape):
        raise module_error(module, where, f"bias delta shape {tuple(db.shape)} does not fit the bias")
    return dw, db


def new_scratch(like: Tensor) -> Tensor:
    """A fresh float32 buffer shaped like `like`."""
    return torch.empty(like.shape, dtype=torch.float32, device=like.device)


def stacked_factors(lowrank: Sequence[Part]) -> tuple[Tensor, Tensor, float]:
    """(up, down, alpha) with alpha · up @ down == Σ scaleᵢ · upᵢ @ downᵢ over low-rank parts of
    the same rows: the scaled up factors side by side and the down factors stacked, so any number
    of LoRAs on one weight is one matmul whose sum is rounded once. A single part is passed as it
    is (its scale as alpha)."""
    if len(lowrank) == 1:
        up, down, _, scale = lowrank[0]
        assert down is not None
        return up, down, scale
    ref = lowrank[0][0]
    ups = torch.empty(ref.shape[0], sum(p[0].shape[1] for p in lowrank), dtype=ref.dtype, device=ref.device)
    col = 0
    for up, _, _, scale in lowrank:
        torch.mul(up, scale, out=ups[:, col : col + up.shape[1]])
        col += up.shape[1]
    return ups, torch.cat([p[1] for p in lowrank if p[1] is not None]), 1.0


def _by_rows(parts: Sequence[Part]) -> dict[tuple[int, int] | None, list[Part]]:
    """Parts grouped by the rows they write (None: the whole weight first), in order: a fused
    q/k/v parameter is then combined exactly as three separate weights would be."""
    groups: dict[tuple[int, int] | None, list[Part]] = {}
    for part in sorted(parts, key=lambda p: p[2] is not None):
        groups.setdefault(part[2], []).append(part)
    return groups


def _pinned(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.is_pinned()


def combine_into(dst: Tensor, base: Tensor, parts: list[Part], scratch: Scratch = new_scratch,
                 dequant: Tensor | None = None) -> None:
    """dst = cast(base + Σ scale·Δ), summed in float32 and written once. Every low-rank part goes
    into one addmm (`stacked_factors`); full deltas are added after it. A float32 `dst` is summed in
    place (straight from `base` when it lies on dst's device), another dtype in a float32
    `scratch(dst)`; 1-byte floats (fp8) saturate instead of overflowing to NaN. `base` may live on
    another device (backups in pinned host memory): it is copied over without blocking. On CUDA an
    fp16/bf16 `dst` whose parts are all low-rank takes `half_gemm_into` (no float32 copy). With a
    `dequant` scale (scaled fp8), `base` is the dequantised weight and the sum is divided by the scale
    before it is requantised into `dst`."""
    if not parts:
        dst.copy_(base, non_blocking=_pinned(base))
        return
    lowrank = _by_rows([p for p in parts if p[1] is not None])
    full = [p for p in parts if p[1] is None]
    if HALF_GEMM and not full and dst.is_cuda and dst.dtype in HALF and _disjoint(lowrank):
        half_gemm_into(dst, base, lowrank)
        return
    acc = dst if dst.dtype == torch.float32 else scratch(dst)
    same = acc is dst and base.device == dst.device
    if same and None in lowrank:
        up, down, alpha = stacked_factors(lowrank.pop(None))
        torch.addmm(base.view(base.shape[0], -1), up, down, alpha=alpha, out=acc.view(acc.shape[0], -1))
    elif same and not lowrank and full[0][2] is None:
        torch.add(base, full[0][0].view(base.shape), alpha=full[0][3], out=dst)
        full = full[1:]
    else:
        acc.copy_(base, non_blocking=_pinned(base))
    for rows, group in lowrank.items():
        view = acc if rows is None else acc[rows[0] : rows[1]]
        up, down, alpha = stacked_factors(group)
        view.view(view.shape[0], -1).addmm_(up, down, alpha=alpha)
    for delta, _, rows, scale in full:
        view = acc if rows is None else acc[rows[0] : rows[1]]
        view.add_(delta.view(view.shape), alpha=scale)
    if acc is not dst:
        if dequant is not None:
            acc.div_(dequant.to(acc.device))
        if dst.element_size() == 1:  # fp8: a value past the largest finite one would become NaN
            limit = torch.finfo(dst.dtype).max
            acc.clamp_(-limit, limit)
        dst.copy_(acc)


HALF = (torch.float16, torch.bfloat16)
HALF_GEMM = True  # False: fp16/bf16 on CUDA also go through the float32 scratch (benchmarks compare both)


def _disjoint(groups: dict[tuple[int, int] | None, list[Part]]) -> bool:
    """Whether no element is written by two groups (so each is rounded once): the whole weight
    alone, or row ranges that do not overlap (the q/k/v slices of a fused parameter)."""
    if None in groups:
        return len(groups) == 1
    ranges = sorted(r for r in groups if r is not None)
    return all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))


def half_gemm_into(dst: Tensor, base: Tensor, lowrank: dict[tuple[int, int] | None, list[Part]]) -> None:
    """dst = base + Σ scale·up@down for an fp16/bf16 `dst`, each element rounded once, without a
    float32 copy of the weight: one half-precision GEMM per row group, accumulating in float32 and
    adding the base in its epilogue, so it reads 2 and writes 2 bytes per element where the float32
    scratch path moves 20, in one kernel where that takes three. The factors enter split in two
    (`split_factors`: hi + lo in dst's dtype, 3× the rank), so the product keeps float32-like
    factors; plain half factors (what peft's fuse uses) would move ~3% of the elements of a typical
    LoRA'd weight by one step. Used on CUDA; the groups must be `_disjoint`."""
    matmul = torch.backends.cuda.matmul
    reduced = matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_fp16_reduced_precision_reduction = matmul.allow_bf16_reduced_precision_reduction = False
    try:
        _half_gemm_into(dst, base, lowrank)
    finally:
        matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction = reduced


def _half_gemm_into(dst: Tensor, base: Tensor, lowrank: dict[tuple[int, int] | None, list[Part]]) -> None:
    first = next(iter(lowrank))
    if first is None and base.device == dst.device:
        up, down, alpha = _half_factors(lowrank[None], dst.dtype)
        torch.addmm(base.view(base.shape[0], -1), up, down, alpha=alpha, out=dst.view(dst.shape[0], -1))
        return
    dst.copy_(base, non_blocking=_pinned(base))
    for rows, group in lowrank.items():
        view = dst if rows is None else dst[rows[0] : rows[1]]
        up, down, alpha = _half_factors(group, dst.dtype)
        view.view(view.shape[0], -1).addmm_(up, down, alpha=alpha)


_SPLITS: dict[tuple[int, int, torch.dtype], tuple[Tensor, Tensor]] = {}


def _half_factors(group: Sequence[Part], dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
    """(up, down, alpha) in `dtype` for one GEMM over `group`. A single LoRA's split is kept as long
    as its float32 factors live (the patcher's factor cache hands back the same tensors every sync)."""
    if len(group) > 1:
        ups, downs, alpha = stacked_factors(group)
        return (*split_factors(ups, downs, dtype), alpha)
    up, down, _, scale = group[0]
    assert down is not None
    key = (id(up), id(down), dtype)
    hit = _SPLITS.get(key)
    if hit is None:
        hit = _SPLITS[key] = split_factors(up, down, dtype)
        weakref.finalize(up, _SPLITS.pop, key, None)
        weakref.finalize(down, _SPLITS.pop, key, None)
    return hit[0], hit[1], scale


def split_factors(up: Tensor, down: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Float32 factors as [hi | lo | hi] @ [hi; hi; lo] in `dtype` (hi = the rounded factor, lo = what
    rounding lost): the product differs from up @ down by lo·lo, ~2⁻²² of it in fp16 (lo is
    subnormal for tiny factors, costing absolute precision far below a step of the weight)."""
    rank = up.shape[1]
    ups = torch.empty(up.shape[0], 3 * rank, dtype=dtype, device=up.device)
    downs = torch.empty(3 * rank, down.shape[1], dtype=dtype, device=down.device)
    hi_u, lo_u = ups[:, :rank], ups[:, rank : 2 * rank]
    hi_u.copy_(up)
    torch.sub(up, hi_u, out=lo_u)
    ups[:, 2 * rank :].copy_(hi_u)
    downs[: 2 * rank].view(2, rank, -1).copy_(down.expand(2, *down.shape))
    torch.sub(down, downs[:rank], out=downs[2 * rank :])
    return ups, downs


def combined(
    base_w: Tensor, base_b: Tensor | None, contributions: Sequence[tuple[Any, tuple[int, int] | None, float]],
    where: str = "weight", scale: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(new weight, new bias or None when the bias is unchanged) in the base's dtype: exactly what
    `Patcher.sync` writes into a weight equal to `base_w` (bias `base_b`) for these contributions;
    PatchError naming `where` when one does not fit. `scale`: a scaled fp8 weight's dequantisation
    scale (`quantized.fp8_scale`)."""
    with torch.no_grad():
        base = base_w if scale is None else base_w.float() * scale.to(base_w.device)
        w_parts, b_parts, _ = weight_parts(contributions, base, base_b, where)
        new_w = torch.empty_like(base_w)
        combine_into(new_w, base if w_parts else base_w, w_parts, dequant=scale if w_parts else None)
        new_b = None
        if base_b is not None and b_parts:
            new_b = torch.empty_like(base_b)
            combine_into(new_b, base_b, b_parts)
        return new_w, new_b
