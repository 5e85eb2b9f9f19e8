"""Scheduled LoRAs without rewriting weights: the low-rank path added in the module's forward.

A LoRA whose UNet strength changes during sampling (start/stop, keyframes, scheduled block
weights) would otherwise rewrite every weight it touches at each step. Instead, for each Linear or
Conv2d it targets, a forward hook adds `s · up(down(x))` to the module's output, `s` being that
step's strength; the weight keeps only the constant LoRAs (fused). Changing the strength between
steps sets Python floats: no kernel, no copy, no host-device synchronisation.

Per hooked module and forward: one matmul (or conv) through the stacked down factors of every
unfused LoRA on it, then one in-place addmm (on a Conv2d, a batched matmul over the channels) per
LoRA whose strength is not zero: two kernels for one LoRA, no temporary of the output's size. A
LoRA at zero (before its start, after its stop) costs nothing. The factors are cast once to the input's
dtype and device and kept (a model moved to another device gets them again there, the old copy
is dropped).

Tolerance against the fused weights at the same constant strength: the same sums in another
order, so float32 outputs agree to ~1e-6 relative to the output's scale; in fp16/bf16 the fused
weight is rounded once to the weight's dtype while the unfused path rounds `x·downᵀ` and the
product, so they agree to about the dtype's resolution (~1e-3 fp16, ~8e-3 bf16, relative to
the output's scale). tests/patcher/test_unfused.py checks these bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

    from loraprompt.adapters.types import AdapterModule
    from loraprompt.cache import DeltaCache
    from loraprompt.plan import Contribution, Key


def factor_target(module: nn.Module, rows: tuple[int, int] | None = None) -> tuple[Tensor, torch.device | None]:
    """(what the factors are checked against: the weight, or its `rows`; the device they go to:
    None for the target's own). A packed 4-bit weight (bitsandbytes NF4/FP4,
    `quantized.packed_kind`) holds bytes, not the layer's shape, and a weight in another memory
    layout (a channels-last conv) cannot be written through a matrix view, which the factors of a
    fused write assume: a meta tensor of its logical shape stands in, and nothing is allocated."""
    from loraprompt.keymaps import logical_shape
    from loraprompt.placement import real_parameter
    from loraprompt.quantized import packed_kind

    weight = real_parameter(module, "weight")  # an offloaded module's kept tensor, not its meta placeholder
    packed = packed_kind(module) is not None
    if not packed and weight.is_contiguous():
        return (weight, None) if rows is None else (weight[rows[0] : rows[1]], None)
    out_features, *rest = logical_shape(weight) if packed else weight.shape
    shape = (out_features if rows is None else rows[1] - rows[0], *rest)
    return torch.empty(shape, dtype=torch.float32, device="meta"), weight.device


def _checked_factors(module: nn.Module, adapter_module: AdapterModule, rows: tuple[int, int] | None,
                     cache: DeltaCache) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """`adapter_module`'s float32 (scale·up, down, Δbias) for `module` (its `rows`), through the
    factor cache; ValueError when they do not fit."""
    from loraprompt.cache import lowrank_factors

    target, device = factor_target(module, rows)
    return cache.factors(adapter_module, target, device) if target.is_contiguous() else lowrank_factors(adapter_module, target, device)


def unfusable(adapter_module: AdapterModule, module: nn.Module, rows: tuple[int, int] | None = None) -> bool:
    """Whether `adapter_module` can run in `module`'s forward: the reader's plain LoRA (no DoRA,
    no Tucker mid, no bias delta) on a Linear (whole, or `rows` of a fused one such as a native
    Flux `qkv`) or on a plain Conv2d (one group, zero padding)."""
    from loraprompt.adapters.types import AdapterModule

    if adapter_module.algorithm != "lora" or type(adapter_module).delta is not AdapterModule.delta:
        return False
    tensors = adapter_module.tensors
    if adapter_module.dora_scale is not None or "mid" in tensors or not {"up", "down"} <= tensors.keys():
        return False
    if adapter_module.bias_delta() is not None:
        return False
    if isinstance(module, nn.Linear):
        return True
    return rows is None and isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


class _Hook:
    """The low-rank path of one module: factors per LoRA and each one's current strength. It is the
    module's `forward` (an instance attribute calling the one it replaced), not a forward hook: a
    module with hooks takes nn.Module's slow call path, ~7 µs per call on the CPU, which over
    SDXL's ~840 hooked modules is ~8% of a GPU step by itself."""

    def __init__(self, module: nn.Module, adapter_modules: tuple[AdapterModule, ...],
                 factors: list[tuple[Tensor, Tensor]], rows: list[tuple[int, int] | None] | None = None) -> None:
        self.adapter_modules = adapter_modules
        self._rows = rows or [None] * len(adapter_modules)  # the output columns each LoRA adds to (None: all)
        self._factors32 = factors  # float32 (scale·up, down) per LoRA, flattened
        self._conv = isinstance(module, nn.Conv2d)
        self._columns: list[tuple[int, int]] = []
        col = 0
        for up, _ in factors:
            self._columns.append((col, col + up.shape[1]))
            col += up.shape[1]
        # one LoRA over a whole Linear: the common case, run without the general loop
        self._simple = not self._conv and len(factors) == 1 and self._rows[0] is None
        self._width = (factors[0][0].shape[0], col)  # (output features, total rank) of a simple one
        self._cast: tuple[torch.dtype, torch.dtype, torch.device, Tensor, list[Tensor]] | None = None
        self._terms: tuple[tuple[float, int], ...] = ()  # (strength, LoRA index) of those not at zero
        self._strengths: tuple[float, ...] = (0.0,) * len(adapter_modules)
        self._module = module
        self._own = module.__dict__.get("forward")  # an instance forward already there (accelerate's, say)
        self._class = type(module)  # else its class's forward, looked up at each call: A1111's manual_cast
        # (MPS, XPU, GTX 16xx, FP8 weight) patches nn.Linear.forward and nn.Conv2d.forward per generation
        self._active = True
        module.forward = self.forward

    @property
    def strengths(self) -> tuple[float, ...]:
        """Each LoRA's strength, read by the next forward (set between steps: Python floats). Set
        the whole sequence: the forward keeps only the LoRAs not at zero, worked out here."""
        return self._strengths

    @strengths.setter
    def strengths(self, values: Sequence[float]) -> None:
        self._strengths = tuple(values)
        self._terms = tuple((s, i) for i, s in enumerate(values) if s != 0.0) if self._active else ()

    def _prepared(self, x: Tensor, out: torch.dtype) -> tuple[torch.dtype, torch.dtype, torch.device, Tensor, list[Tensor]]:
        """(x's dtype, the output's dtype, the device, stacked down factors in x's dtype, up factors
        in the output's), cast once. The two dtypes differ under autocast (A1111 on CUDA: a
        LayerNorm/GroupNorm hands an fp16 layer float32 input, the layer answers fp16)."""
        self._cast = None  # a moved model: drop the old device's copy first
        module = self._module
        down = torch.cat([d for _, d in self._factors32]).to(x.device, x.dtype)
        ups = [u.to(x.device, out) for u, _ in self._factors32]
        if isinstance(module, nn.Conv2d):  # up stays (out, rank): a batched matmul over the channels
            down = down.view(down.shape[0], module.in_channels, *module.kernel_size)
        else:
            ups = [u.t().contiguous() for u in ups]  # (rank, out): h @ upᵀ as one addmm
        self._cast = (x.dtype, out, x.device, down, ups)
        return self._cast

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        own = self._own
        output = own(x, *args, **kwargs) if own is not None else self._class.forward(self._module, x, *args, **kwargs)
        terms = self._terms
        if not terms:
            return output
        cast, out = self._cast, output.dtype
        if cast is None or cast[0] is not x.dtype or cast[1] is not out or cast[2] != x.device:
            cast = self._prepared(x, out)
        if self._simple and not torch.is_grad_enabled() and output.is_contiguous():
            width = self._width  # x·downᵀ·upᵀ added into the output in place: 2 kernels
            h = F.linear(x, cast[3])
            output.view(-1, width[0]).addmm_((h if h.dtype is out else h.to(out)).reshape(-1, width[1]), cast[4][0], alpha=terms[0][0])
            return output
        return self._general(x, output, cast[3], cast[4], terms)

    def _general(self, x: Tensor, output: Tensor, down: Tensor, ups: list[Tensor],
                 terms: tuple[tuple[float, int], ...]) -> Tensor:
        """Any number of LoRAs, on a Conv2d, on row slices, or with autograd on."""
        module = self._module
        inplace = not torch.is_grad_enabled() and output.is_contiguous()
        flat = None
        if self._conv:
            assert isinstance(module, nn.Conv2d)
            h = F.conv2d(x, down, None, module.stride, module.padding, module.dilation)
            if h.dim() == 3:  # an unbatched (channels, height, width) input
                h = h.unsqueeze(0)
        else:
            h = F.linear(x, down)
        if h.dtype is not output.dtype:  # autocast ran it in its own dtype; the up factors are in the output's
            h = h.to(output.dtype)
        if not self._conv:
            h2d = h.view(-1, h.shape[-1]) if h.is_contiguous() else h.reshape(-1, h.shape[-1])
            flat = output.view(-1, output.shape[-1]) if inplace else None
        single = len(ups) == 1
        for s, i in terms:
            (c0, c1), up, rows = self._columns[i], ups[i], self._rows[i]
            if self._conv:  # up·h per image, over (channels, pixels); in place: one kernel, no temporary
                part = (h if single else h[:, c0:c1]).flatten(2)
                if inplace:
                    output.view(part.shape[0], up.shape[0], -1).baddbmm_(up.expand(part.shape[0], -1, -1), part, alpha=s)
                else:
                    output = output + s * torch.matmul(up, part).view(output.shape)
            elif flat is not None:
                (flat if rows is None else flat[:, rows[0] : rows[1]]).addmm_(h2d if single else h2d[:, c0:c1], up, alpha=s)
            elif rows is None:
                output = output + s * ((h if single else h[..., c0:c1]) @ up)
            else:
                output = output + F.pad(s * (h[..., c0:c1] @ up), (rows[0], output.shape[-1] - rows[1]))
        return output

    def remove(self) -> None:
        """Put the replaced forward back; if something wrapped ours since, stay in place, inert."""
        self._active = False
        self._terms = ()
        module = self._module
        if module.__dict__.get("forward") == self.forward:
            if self._own is None:
                del module.forward
            else:
                module.forward = self._own


class LowRankHooks:
    """The unfused LoRAs of one patcher: weight key -> forward hook on its module."""

    def __init__(self) -> None:
        self._hooks: dict[Key, _Hook] = {}

    def __len__(self) -> int:
        return len(self._hooks)

    def hooked(self, key: Key, adapter_modules: tuple[AdapterModule, ...]) -> bool:
        """Whether `key` already runs exactly these adapter modules (validated when hooked)."""
        hook = self._hooks.get(key)
        return hook is not None and hook.adapter_modules == adapter_modules

    def check(self, key: Key, modules: Mapping[str, nn.Module], contributions: tuple[Contribution, ...],
              cache: DeltaCache) -> None:
        """Validate (and cache) the factors of the module `key` names among its component's
        `modules`, about to be hooked, before anything is written: PatchError naming the file
        module and the weight when they do not fit, or when the module no longer runs."""
        if self.hooked(key, tuple(c[0] for c in contributions)):
            return
        from loraprompt.combine import module_error
        from loraprompt.placement import fused_away

        module = modules[key[1]]
        refused = fused_away(key[0], modules, key[1])
        if refused is not None:
            refused.module = contributions[0][0]  # type: ignore[attr-defined]  # whose LoRA it is
            raise refused

        for adapter_module, rows, _ in contributions:
            try:
                found = _checked_factors(module, adapter_module, rows, cache)
            except ValueError as exc:
                raise module_error(adapter_module, ".".join(key), str(exc)) from exc
            if found is None:  # refused here, before any weight is written, not half-way through the sync
                raise module_error(adapter_module, ".".join(key), "its low-rank factors cannot run in this layer's forward")

    def update(self, modules: Mapping[Key, nn.Module], plan: Mapping[Key, tuple[Contribution, ...]],
               cache: DeltaCache) -> int:
        """Hook exactly the modules of `plan` (key -> (adapter module, rows, strength)) with those
        strengths; a module whose set of LoRAs is unchanged only gets new strengths. Returns the
        number of hooked modules."""
        for key in [k for k in self._hooks if k not in plan]:
            self._hooks.pop(key).remove()
        for key, contributions in plan.items():
            adapter_modules = tuple(c[0] for c in contributions)
            hook = self._hooks.get(key)
            if hook is None or hook.adapter_modules != adapter_modules:
                if hook is not None:
                    hook.remove()
                module = modules[key]
                factors = []
                for m, rows, _ in contributions:
                    found = _checked_factors(module, m, rows, cache)
                    assert found is not None  # unfusable() said it is a plain LoRA
                    factors.append((found[0], found[1]))
                hook = self._hooks[key] = _Hook(module, adapter_modules, factors, [c[1] for c in contributions])
            hook.strengths = [float(c[2]) for c in contributions]
        return len(self._hooks)

    def set_strengths(self, strengths: Mapping[Key, list[float]]) -> None:
        """New strengths for hooked modules (in the order of their LoRAs)."""
        for key, values in strengths.items():
            self._hooks[key].strengths = values

    def clear(self) -> None:
        """Remove every hook."""
        for hook in self._hooks.values():
            hook.remove()
        self._hooks.clear()
