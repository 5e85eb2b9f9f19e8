"""One NaN/Inf test for every adapter tensor the engine and the tools read.

A floating tensor is all finite exactly when its minimum and maximum are (NaN propagates through
both, +-Inf is an extreme). `torch.aminmax` is one pass without the bool-sized copy that
`isfinite(t).all()` writes: about 15x faster on CPU for fp16/bf16/fp32, which was a fifth of a
streaming merge's time. The result stays a 0-dim tensor, so callers can batch the device read-back."""

from __future__ import annotations

from typing import Any


def finite_flag(t: Any) -> Any:
    """A 0-dim bool tensor on `t`'s device: True when every element of `t` is finite."""
    import torch

    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    if t.element_size() == 1:  # 1-byte floats (fp8) have no aminmax/isfinite kernels: via float32
        t = t.float()
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo) & torch.isfinite(hi)


def all_finite(t: Any) -> bool:
    """`finite_flag` read back as a Python bool (one host-device synchronisation)."""
    return bool(finite_flag(t))
