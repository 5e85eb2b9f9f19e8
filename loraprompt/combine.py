"""The last step of patching one weight: base + Σ strength·Δ, summed in float32 and cast once.

`weight_parts` computes and checks the float32 parts of one weight's contributions, `combine_into`
writes base + parts into a tensor, and `combined` does both into new tensors. `Patcher.sync` (in
place, with its caches and scratch buffer) and the merge tool (streaming a file) both go through
them, so a merged checkpoint is bit-identical to the patched model of the same dtype."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.cache import lowrank_factors, to_device
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
    return PatchError(f"{module.lora_key} -> {where}: {reason}; nothing applied", module=module)


def weight_parts(
    contributions: Sequence[tuple[Any, tuple[int, int] | None, float]], base_w: Tensor, base_b: Tensor | None,
    where: str, cache: DeltaCache | None = None, *, device: torch.device | None = None, pinned: bool = False,
) -> tuple[list[Part], list[Part], bool]:
    """Validated float32 (weight parts, bias parts) of `contributions` ((adapter module, rows or
    None, strength), as in a plan) on the base weight and bias, on `device` (default: the base's;
    the patcher's backups may live in host memory while the weight is on the GPU), and whether
    `cache` holds every full delta among them. A plain LoRA gives its factors (written with one addmm); another
    algorithm its full delta, unit-strength for linear ones (scaled when written). `pinned`: the
    cache keeps the factors in pinned host memory and they are copied over for this use."""
    device = device or base_w.device
    base32: list[Tensor | None] = [None, None]
    w_parts: list[Part] = []
    b_parts: list[Part] = []
    kept = True
    for module, rows, strength in contributions:
        target = base_w if rows is None else base_w[rows[0] : rows[1]]
        try:
            factors = cache.factors(module, target, device, pinned=pinned) if cache is not None \
                else lowrank_factors(module, target, device)
        except ValueError as exc:
            raise module_error(module, where, str(exc)) from exc
        if factors is not None:
            up, down, db = factors
            if pinned:  # copied over for this use, without blocking
                up, down = to_device(up, device), to_device(down, device)
                db = None if db is None else to_device(db, device)
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
    if all(p[2] is None for p in parts):  # the common case: whole weights only
        return {None: list(parts)} if parts else {}
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
    another device (backups in pinned host memory): it is copied over without blocking. An
    fp16/bf16 `dst` whose parts are all whole-weight LoRAs takes `_product_then_sum`. With a
    `dequant` scale (scaled fp8), `base` is the dequantised weight and the sum is divided by the scale
    before it is requantised into `dst`."""
    if not parts:
        dst.copy_(base, non_blocking=_pinned(base))
        return
    if dst.is_cuda:
        with _ieee_matmuls():
            _combine_into(dst, base, parts, scratch, dequant)
    else:
        _combine_into(dst, base, parts, scratch, dequant)


@contextmanager
def _ieee_matmuls() -> Iterator[None]:
    """Float32 matmuls in full precision for the duration, whatever the host set: Automatic1111
    turns TF32 on (torch.backends.cuda.matmul.allow_tf32), which would round the factors to 10 bits.
    A process using the newer fp32_precision API keeps its own choice."""
    matmul = torch.backends.cuda.matmul
    try:
        tf32 = matmul.allow_tf32
    except RuntimeError:  # torch refuses to mix the legacy flag with fp32_precision settings
        tf32 = False
    if tf32:
        matmul.allow_tf32 = False
    try:
        yield
    finally:
        if tf32:
            matmul.allow_tf32 = True


def _combine_into(dst: Tensor, base: Tensor, parts: list[Part], scratch: Scratch, dequant: Tensor | None) -> None:
    lowrank = _by_rows([p for p in parts if p[1] is not None])
    full = [p for p in parts if p[1] is None]
    if not full and list(lowrank) == [None] and dst.dtype in (torch.float16, torch.bfloat16):
        _product_then_sum(dst, base, lowrank[None], scratch)
        return
    acc = dst if dst.dtype == torch.float32 else scratch(dst)
    same = acc is dst and base.device == dst.device
    if same and None in lowrank:
        up, down, alpha = stacked_factors(lowrank.pop(None))
        torch.addmm(_matrix(base), up, down, alpha=alpha, out=_matrix(acc))
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


def _product_then_sum(dst: Tensor, base: Tensor, lowrank: list[Part], scratch: Scratch) -> None:
    """dst = cast(base + alpha·up@down) for a 2-byte `dst`: the float32 product into the scratch,
    then one mixed-dtype add that reads the base, sums in float32 and rounds once into dst. Two
    kernels and 12 bytes per element, where copying the base into the scratch, adding the product
    there and copying back takes three and 20: on a GPU a switch is bound by kernels per weight
    (SD1.5) and bytes (SDXL). The product is rounded to float32 before the add (within 2⁻²⁴ of the
    fused addmm, which the fp16/bf16 result almost never sees). A pinned host base (backups in host
    memory) is first copied into dst. On the CPU the add runs in pieces (`_chunked_sum`)."""
    up, down, alpha = stacked_factors(lowrank)
    acc, flat, base = _matrix(scratch(dst)), _matrix(dst), _matrix(base)
    torch.mm(up, down, out=acc)
    if base.device != dst.device:
        flat.copy_(base, non_blocking=_pinned(base))
        flat.add_(acc, alpha=alpha)
    elif dst.is_cpu:
        _chunked_sum(flat, base, acc, alpha)
    else:
        torch.add(base, acc, alpha=alpha, out=flat)


CHUNK = 1 << 16  # elements widened and summed at a time on the CPU (256 KiB of float32)
_pieces = threading.local()


def _chunked_sum(dst: Tensor, base: Tensor, product: Tensor, alpha: float) -> None:
    """`torch.add(base, product, alpha=alpha, out=dst)` for a 2-byte CPU `dst` and `base` and a
    float32 `product`, the same bits: CHUNK elements at a time, the base widened into a small
    buffer that stays in the CPU's cache, the same float32 add on it, one rounding copy into dst.
    torch's mixed-dtype add makes two full-size float32 temporaries instead (the widened base,
    the sum), fresh pages every time: 27 -> 8 ms on a 6144x1536 bf16 weight."""
    piece = getattr(_pieces, "buffer", None)
    if piece is None:
        piece = _pieces.buffer = torch.empty(CHUNK, dtype=torch.float32)
    flat_dst, flat_base, flat_product = dst.view(-1), base.reshape(-1), product.view(-1)
    numel = flat_dst.numel()
    for start in range(0, numel, CHUNK):
        end = min(numel, start + CHUNK)
        wide = piece[: end - start]
        wide.copy_(flat_base[start:end])
        torch.add(wide, flat_product[start:end], alpha=alpha, out=wide)
        flat_dst[start:end].copy_(wide)


def _matrix(t: Tensor) -> Tensor:
    """`t` as rows × the rest (a Linear weight already is: no view made)."""
    return t if t.dim() == 2 else t.view(t.shape[0], -1)


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
