"""The finishing step shared by every algorithm: reshape, alpha/rank scale, DoRA, strength, bias."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import Tensor

    from loraprompt.adapters.types import AdapterModule

EPS = torch.finfo(torch.float32).eps


def _fit(module: AdapterModule, delta: Tensor, weight: Tensor) -> Tensor:
    if delta.shape == weight.shape:
        return delta
    if delta.numel() != weight.numel():
        raise ValueError(
            f"{module.lora_key}: {module.algorithm} delta of shape {tuple(delta.shape)} does not fit "
            f"the weight of shape {tuple(weight.shape)}"
        )
    return delta.reshape(weight.shape)


def _column_norm(v: Tensor) -> Tensor:
    """‖V‖ per input column (dim 1 kept), over the output rows and kernel dims."""
    n = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1)
    return n.reshape(1, v.shape[1], *[1] * (v.dim() - 2))


def _row_norm(v: Tensor) -> Tensor:
    """‖V‖ per output row."""
    return v.reshape(v.shape[0], -1).norm(dim=1).reshape(v.shape[0], *[1] * (v.dim() - 1))


def _per_row(dora: Tensor, weight: Tensor) -> bool:
    return dora.numel() == weight.shape[0] and (dora.dim() <= 1 or dora.shape[0] == weight.shape[0])


def _dora(module: AdapterModule, weight: Tensor, scaled: Tensor, strength: float) -> Tensor:
    """ΔW for a weight-decomposed adapter: W' − W, with the tool's (or A1111's) convention."""
    assert module.dora_scale is not None
    m = module.dora_scale.to(device=weight.device, dtype=torch.float32)
    sizes = (weight.shape[0],) if module.extra.get("dora") == "peft" or weight.dim() < 2 else tuple(weight.shape[:2])
    if m.numel() not in sizes:
        raise ValueError(f"{module.lora_key}: dora_scale of shape {tuple(m.shape)} has one value per neither the output "
                         f"rows nor the input columns of the weight of shape {tuple(weight.shape)}")
    if module.mode == "a1111":
        v = weight + scaled  # the stored tensor broadcasts as it is, whatever its orientation
        return strength * (v * m / _column_norm(v) - weight)
    if module.extra.get("dora") == "peft":
        v = weight + strength * scaled
        return v * (m.reshape(-1, *[1] * (weight.dim() - 1)) / _row_norm(v)) - weight
    v = weight + scaled
    if _per_row(m, weight):
        norm = _row_norm(v) + EPS
        m = m.reshape(-1, *[1] * (weight.dim() - 1))
    else:
        norm = _column_norm(v) + EPS
        m = m.reshape(1, -1, *[1] * (weight.dim() - 2))
    factor = strength * (m / norm - 1) + 1
    return v * factor - weight


def finish_delta(
    module: AdapterModule, weight: Tensor, strength: float, bias: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """(ΔW, Δbias) for `module` at `strength` against the original float32 `weight`/`bias`."""
    w = weight.to(torch.float32)
    scaled = _fit(module, module.unit_delta(w).to(torch.float32), w) * module.scale
    if module.dora_scale is not None:
        dw = _dora(module, w, scaled, strength)
    else:
        dw = scaled * strength
    db = module.bias_delta()
    if db is None or bias is None:
        return dw, None
    db = db.to(device=bias.device, dtype=torch.float32)
    if db.numel() != bias.numel():
        raise ValueError(
            f"{module.lora_key}: bias delta of shape {tuple(db.shape)} does not fit the bias of shape {tuple(bias.shape)}"
        )
    return dw, db.reshape(bias.shape) * strength
