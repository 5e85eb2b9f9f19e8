"""Scheduled LoRAs without rewriting weights: the low-rank path added in the module's forward.

A LoRA whose UNet strength changes during sampling (start/stop, keyframes, scheduled block
weights) would otherwise rewrite every weight it touches at each step. Instead, for each Linear or
Conv2d it targets, a forward hook adds `s · up(down(x))` to the module's output, `s` being that
step's strength; the weight keeps only the constant LoRAs (fused). Changing the strength between
steps sets Python floats (and copies them into one small table, for compiled forwards: see below):
no weight touched, no host-device synchronisation.

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

Under torch.compile the strengths are not Python floats: dynamo would take each for a constant of
the graph and compile the model again at every step (until its recompile limit, after which the
model runs uncompiled for good). A traced forward reads them from one float32 table on the device
instead, shared by every hooked module of the patcher and updated in place (one copy) when they
change, and adds each LoRA out of place, which the compiler fuses (tests/patcher/test_compile.py).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from torch.compiler import is_compiling as _compiling
except ImportError:  # torch < 2.3
    def _compiling() -> bool:
        dynamo = sys.modules.get("torch._dynamo")
        return dynamo is not None and bool(dynamo.is_compiling())

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
        self.owner: LowRankHooks | None = None  # whose strength table a compiled forward reads
        self.slot = 0  # where this module's strengths start in it
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

    def prepare_for_weight(self) -> None:
        """Cast the factors for the dtype and device of the module's weight (when it computes in
        it), unless they are: a compiled forward finds them there (it keeps none itself)."""
        weight, elsewhere = factor_target(self._module)
        if elsewhere is None and weight.dtype in (torch.float32, torch.float16, torch.bfloat16) and \
                self._kept(weight.dtype, weight.dtype, weight.device) is None:
            self._prepared(weight, weight.dtype)

    def _kept(self, dtype: torch.dtype, out: torch.dtype, device: torch.device) -> tuple[Any, ...] | None:
        """The kept casts (`_prepared`) when they are for input `dtype`, output `out` and `device`,
        else None. The eager forward inlines this test (with `is`): it runs at every call."""
        cast = self._cast
        return cast if cast is not None and cast[0] == dtype and cast[1] == out and cast[2] == device else None

    def _prepared(self, x: Tensor, out: torch.dtype) -> tuple[torch.dtype, torch.dtype, torch.device, Tensor, list[Tensor]]:
        """(x's dtype, the output's dtype, the device, stacked down factors in x's dtype, up factors
        in the output's), cast once. The two dtypes differ under autocast (A1111 on CUDA: a
        LayerNorm/GroupNorm hands an fp16 layer float32 input, the layer answers fp16)."""
        self._cast = None  # a moved model: drop the old device's copy first
        down, ups = self._cast_factors(x.dtype, out, x.device)
        self._cast = (x.dtype, out, x.device, _static(down), [_static(u) for u in ups])
        return self._cast

    def _cast_factors(self, dtype: torch.dtype, out: torch.dtype, device: torch.device) -> tuple[Tensor, list[Tensor]]:
        """(stacked down factors in `dtype`, up factors in `out`) on `device`, laid out for the forward."""
        module = self._module
        down = torch.cat([d for _, d in self._factors32]).to(device, dtype)
        ups = [u.to(device, out) for u, _ in self._factors32]
        if isinstance(module, nn.Conv2d):  # up stays (out, rank): a batched matmul over the channels
            down = down.view(down.shape[0], module.in_channels, *module.kernel_size)
        else:
            ups = [u.t().contiguous() for u in ups]  # (rank, out): h @ upᵀ as one addmm
        return down, ups

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        own = self._own
        output = own(x, *args, **kwargs) if own is not None else self._class.forward(self._module, x, *args, **kwargs)
        if _compiling():
            return self._traced(x, output)
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

    def _traced(self, x: Tensor, output: Tensor) -> Tensor:
        """The forward as torch.compile traces it: every LoRA added out of place, each scaled by its
        entry in the owner's strength table (a tensor: a new strength is new data for the same
        graph, not a new graph). Factors cast for another dtype or device than the kept ones are
        cast inside the graph."""
        owner = self.owner
        if not self._active or owner is None or owner.table is None:
            return output
        out = output.dtype
        cast = self._kept(x.dtype, out, x.device)
        down, ups = (cast[3], cast[4]) if cast is not None else self._cast_factors(x.dtype, out, x.device)
        strengths = owner.table[self.slot : self.slot + len(ups)].to(x.device, out)
        return self._general(x, output, down, ups, tuple((strengths[i], i) for i in range(len(ups))), inplace=False)

    def _general(self, x: Tensor, output: Tensor, down: Tensor, ups: list[Tensor],
                 terms: tuple[tuple[Any, int], ...], *, inplace: bool | None = None) -> Tensor:
        """Any number of LoRAs, on a Conv2d, on row slices, or with autograd on; `terms`' strengths
        are floats, or 0-dim tensors when traced (then not `inplace`)."""
        module = self._module
        if inplace is None:
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


def _static(t: Tensor) -> Tensor:
    """`t`, marked for torch.compile as living at one address (when torch.compile is in use): CUDA
    graphs ("reduce-overhead") read it in place instead of copying it in at every replay."""
    dynamo = sys.modules.get("torch._dynamo")
    mark = getattr(dynamo, "mark_static_address", None)
    if mark is not None:
        mark(t)
    return t


def _device_of(hook: _Hook) -> torch.device:
    """Where `hook`'s module computes: its weight's device (an offloaded module's: the kept tensor's)."""
    target, device = factor_target(hook._module)
    return device or target.device


class LowRankHooks:
    """The unfused LoRAs of one patcher: weight key -> forward hook on its module."""

    def __init__(self) -> None:
        self._hooks: dict[Key, _Hook] = {}
        self.table: Tensor | None = None  # every hook's strengths, in slot order, for compiled forwards

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
            refused.module = contributions[0][0]  # whose LoRA it is
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
        relayout = False  # the table's slots given out again when hooks come or go
        for key in [k for k in self._hooks if k not in plan]:
            self._hooks.pop(key).remove()
            relayout = True
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
                hook.owner, relayout = self, True
                hook.prepare_for_weight()
            hook.strengths = [float(c[2]) for c in contributions]
        if not relayout and self.table is not None and self._hooks:  # a model moved since: the table follows
            relayout = _device_of(next(iter(self._hooks.values()))) != self.table.device
            if relayout:
                for hook in self._hooks.values():
                    hook.prepare_for_weight()
        self._upload(relayout)
        return len(self._hooks)

    def set_strengths(self, strengths: Mapping[Key, list[float]]) -> None:
        """New strengths for hooked modules (in the order of their LoRAs)."""
        for key, values in strengths.items():
            self._hooks[key].strengths = values
        self._upload()

    def _upload(self, relayout: bool = False) -> None:
        """Write every hook's strengths into the table compiled forwards read: in place (one copy,
        from pinned memory without blocking on a GPU) while the hooks and their device are the
        same, else into a new table on the hooked weights' device, with the slots given out again."""
        values = [s for hook in self._hooks.values() for s in hook.strengths]
        table = self.table
        if not values:
            self.table = None
            return
        if table is None or relayout:
            slot = 0
            for hook in self._hooks.values():
                hook.slot, slot = slot, slot + len(hook.strengths)
            device = _device_of(next(iter(self._hooks.values())))
            table = self.table = _static(torch.empty(len(values), dtype=torch.float32, device=device))
        src = torch.tensor(values, dtype=torch.float32)
        if table.is_cuda:
            try:
                src = src.pin_memory()  # the caching host allocator keeps it until the copy is done
            except RuntimeError:
                pass
        table.copy_(src, non_blocking=src.is_pinned())

    def clear(self) -> None:
        """Remove every hook."""
        for hook in self._hooks.values():
            hook.remove()
        self._hooks.clear()
        self.table = None
