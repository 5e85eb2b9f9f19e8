"""Weights the patcher cannot rewrite exactly, and which path each patched weight takes.

Paths (`Patcher.sync(...).paths`, one per patched weight):
- "in place (<dtype>)": float32/float16/bfloat16 weights get base + Σ strength·Δ, summed in
  float32 and cast once (`loraprompt.combine`).
- "fp8 requantized (<dtype>)": float8 weights take the same path: dequantised to float32 from
  the exact backup, summed, requantised once, so repeated switches never accumulate rounding.
- "fp8 requantized (<dtype>, scaled)": a scaled fp8 weight (ComfyUI's scaled fp8 checkpoints keep
  a float32 `scale_weight` beside each fp8 `weight`; other quantizers call it `weight_scale`; one
  value per tensor, or per output row) is dequantised with its scale (fp8 · scale), summed in
  float32, divided by the same scale and requantised once; the scale itself is never changed.
- "unfused (<kind>)": a weight stored in a packed quantized form (bitsandbytes 4-bit NF4/FP4 as
  Forge runs Flux) cannot be rewritten without requantising it, which would change the base
  model for every later generation; the LoRA stays out of the weight and runs beside it in the
  module's forward. Plain LoRAs (on the whole weight or on rows of a fused one) take the
  scheduled LoRAs' low-rank path (`loraprompt.unfused`: two small matmuls in the input's dtype,
  the module's forward replaced, as peft runs LoRA on 4-bit layers); other linear algorithms (and
  plain LoRAs on the same weight) a forward hook here (x·ΔWᵀ or x·downᵀ·upᵀ, summed in float32,
  its ΔW built once per hooked LoRA). Restoring removes both; the packed weight is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.errors import PatchError

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.utils.hooks import RemovableHandle

    from loraprompt.plan import Key, Plan

FP8 = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n)}


def packed_kind(module: nn.Module | None, param: str = "weight") -> str | None:
    """"nf4"/"fp4"/… when the module's weight is a packed quantized tensor (bitsandbytes 4-bit),
    else None."""
    weight = getattr(module, param, None)
    if not isinstance(weight, torch.Tensor) or weight.is_floating_point():
        return None
    state = getattr(weight, "quant_state", None)
    if state is None:
        return None
    return str(getattr(state, "quant_type", None) or getattr(weight, "quant_type", "4bit"))


def weight_path(weight: Tensor, scale: Tensor | None = None) -> str:
    """How a floating-point weight is patched (see the module docstring)."""
    name = str(weight.dtype).removeprefix("torch.")
    if weight.dtype in FP8:
        return f"fp8 requantized ({name}, scaled)" if scale is not None else f"fp8 requantized ({name})"
    return f"in place ({name})"


SCALE_NAMES = ("scale_weight", "weight_scale")  # ComfyUI's scaled fp8; other fp8 quantizers


def fp8_scale(module: nn.Module | None, param: str, weight: Tensor) -> Tensor | None:
    """The float32 dequantisation scale of a scaled fp8 `weight` (shaped to broadcast over it:
    one value, or one per output row), or None when the weight is not fp8 or has no scale."""
    if weight.dtype not in FP8 or param != "weight":
        return None
    for name in SCALE_NAMES:
        scale = getattr(module, name, None)
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
            continue
        if scale.numel() == 1:
            return scale.detach().reshape(()).float()
        if scale.numel() == weight.shape[0]:
            return scale.detach().float().reshape(weight.shape[0], *([1] * (weight.dim() - 1)))
        raise PatchError(f"{name} of shape {tuple(scale.shape)} does not fit the fp8 weight {tuple(weight.shape)}: "
                         "only per-tensor and per-row scales are supported")
    return None


class Unfused:
    """LoRA contributions kept beside packed quantized weights, in forward hooks."""

    def __init__(self, modules: Mapping[str, Mapping[str, nn.Module]]) -> None:
        self._modules = modules
        # key -> (its forward hook, the (adapter module, rows) it runs, their strengths: the hook reads this list)
        self._hooks: dict[Key, tuple[RemovableHandle, tuple[Any, ...], list[float]]] = {}
        self._kinds: dict[Key, tuple[Any, str | None]] = {}  # key -> (its parameter, packed_kind)
        self._checked: dict[Key, tuple[Any, ...]] = {}  # key -> the (adapter module, rows) whose shapes fit it
        self.applied: Plan = {}
        self.lowrank: Plan = {}  # packed weights whose plain LoRAs run in `unfused.LowRankHooks`

    def __len__(self) -> int:
        return len(self.applied) + len(self.lowrank)

    def split(self, plan: Plan) -> tuple[Plan, Plan, Plan]:
        """(the plan's in-place part, the part for this class's hooks, checked: PatchError when a
        contribution cannot run beside a packed weight, and the packed weights holding only plain
        LoRAs, for the low-rank path). Nothing is changed."""
        from loraprompt.unfused import unfusable

        dense: dict[Key, Any] = {}
        unfused: dict[Key, Any] = {}
        lowrank: dict[Key, Any] = {}
        for key, contributions in plan.items():
            component, name, param = key
            module = self._modules.get(component, {}).get(name)
            weight = getattr(module, param, None)
            known = self._kinds.get(key)
            if known is None or known[0] is not weight:  # looked at again only for a new parameter
                known = self._kinds[key] = (weight, packed_kind(module, param))
                self._checked.pop(key, None)
            if known[1] is None:
                dense[key] = contributions
                continue
            assert module is not None
            if param == "weight" and all(unfusable(m, module, rows) for m, rows, _ in contributions):
                lowrank[key] = contributions  # its factors are checked against the logical shape by the patcher
                continue
            unfused[key] = contributions
            signature = _signature(contributions)
            if self._checked.get(key) == signature:
                continue  # checked before, on this parameter: building its ΔW again would only cost time
            for adapter_module, rows, _strength in contributions:
                if not adapter_module.linear or adapter_module.algorithm in ("ia3", "glora", "oft", "boft", "tlora"):
                    raise _error(adapter_module, key, "its delta depends on the base weight, which is stored packed (4-bit)")
                _factors(adapter_module, module, key, rows)  # shapes checked now
            self._checked[key] = signature
        return dense, unfused, lowrank

    def apply(self, unfused: Plan, lowrank: Plan | None = None) -> int:
        """Hooks for exactly `unfused` (already checked by `split`); `lowrank`: the packed weights
        now run by the low-rank path. Returns how many packed weights changed."""
        lowrank = lowrank or {}
        self._checked = {k: v for k, v in self._checked.items() if k in unfused}  # holds no LoRA gone from the plan
        changed = {k for k in {*unfused, *self.applied} if unfused.get(k) != self.applied.get(k)}
        changed |= {k for k in {*lowrank, *self.lowrank} if lowrank.get(k) != self.lowrank.get(k)}
        self.lowrank = dict(lowrank)
        for key in [k for k in self._hooks if k not in unfused or self._hooks[k][1] != _signature(unfused[k])]:
            self._hooks.pop(key)[0].remove()
            self.applied.pop(key, None)
        for key, contributions in unfused.items():
            hooked = self._hooks.get(key)
            if hooked is not None:  # the same LoRAs: only their strengths change, the hook reads them
                hooked[2][:] = [float(c[2]) for c in contributions]
            else:
                module = self._modules[key[0]][key[1]]
                terms = [(*_factors(m, module, key, rows), rows) for m, rows, _ in contributions]
                strengths = [float(c[2]) for c in contributions]
                handle = module.register_forward_hook(_hook(terms, strengths))
                self._hooks[key] = (handle, _signature(contributions), strengths)
            self.applied[key] = contributions
        return len(changed)

    def paths(self) -> dict[Key, str]:
        return {k: f"unfused ({packed_kind(self._modules[k[0]][k[1]], k[2])})" for k in (*self.applied, *self.lowrank)}

    def clear(self) -> None:
        self.apply({})


def _error(module: Any, key: Key, reason: str) -> PatchError:
    return PatchError(f"{module.lora_key} -> {'.'.join(key)}: {reason}; nothing applied", module=module)


def _factors(
    adapter_module: Any, module: nn.Module, key: Key, rows: tuple[int, int] | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(up·scale, down) of a LoRA, or (ΔW, None) of another linear algorithm, in float32, and Δbias."""
    from loraprompt.cache import lowrank_factors
    from loraprompt.keymaps import logical_shape

    out_f, in_f = logical_shape(module.get_parameter("weight"))
    out_f = out_f if rows is None else rows[1] - rows[0]
    device = next((t.device for t in module.parameters()), torch.device("cpu"))
    like = torch.zeros((out_f, in_f), dtype=torch.float32, device=device)
    try:
        factors = lowrank_factors(adapter_module, like)
        if factors is not None:
            up, down, db = factors
            return up, down, db
        dw, db = adapter_module.delta(like, 1.0, None)
    except ValueError as exc:
        raise _error(adapter_module, key, str(exc)) from exc
    bias = adapter_module.bias_delta()
    return dw.reshape(out_f, in_f), None, None if bias is None else bias.float().to(device)


def _signature(contributions: Any) -> tuple[Any, ...]:
    """What a hook's float32 factors depend on: its (adapter module, rows), not the strengths."""
    return tuple((c[0], c[1]) for c in contributions)


def _hook(terms: list[tuple[Tensor, Tensor | None, Tensor | None, tuple[int, int] | None]], strengths: list[float]) -> Any:
    """A forward hook adding Σ strength·(x·ΔWᵀ + Δbias), read from `strengths` at each call."""
    def forward_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        x = args[0].to(torch.float32)
        extra = torch.zeros(output.shape, dtype=torch.float32, device=output.device)
        for (first, down, db, rows), strength in zip(terms, strengths):
            y = (x @ down.T) @ first.T if down is not None else x @ first.T
            if db is not None:
                y = y + db
            if rows is None:
                extra += strength * y
            else:
                extra[..., rows[0] : rows[1]] += strength * y
        return output + extra.to(output.dtype)

    return forward_hook
