"""How the Patcher writes weights: the parts of each changed weight computed and checked before
anything is written, base + parts written once per weight, every written weight put back if a
write fails, weights changed by someone else since our last write followed, and the weight (and
bias) each key names looked up. `Writes` is the write path of `loraprompt.patcher.Patcher` (a
mixin: it reads the patcher's modules, plan and caches; the backups are the patcher's
`BackupStore`, which it asks for copies)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.backups import OutOfMemoryError
from loraprompt.combine import Part, combine_into, weight_parts
from loraprompt.errors import PatchError
from loraprompt.placement import fused_away, stored
from loraprompt.quantized import fp8_scale

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch import Tensor, nn

    from loraprompt.backups import BackupStore
    from loraprompt.cache import DeltaCache
    from loraprompt.owners import Claims
    from loraprompt.plan import Key, Plan, SyncReport

_BUFFER = torch.Size([-1])  # the scratch buffer's own entry among its views


class Writes:
    """The write path of `Patcher` (see its docstring)."""

    keep_backups: bool
    float_base: Callable[[nn.Module, str], Tensor | None] | None
    _store: BackupStore
    _deltas: DeltaCache
    _applied: Plan
    _claims: Claims
    _params: dict[Key, tuple[Tensor, Tensor | None]]
    _scratch: dict[torch.device, dict[torch.Size, Tensor]]
    _modules: dict[str, dict[str, nn.Module]]

    if TYPE_CHECKING:
        def _module_of(self, key: Key) -> nn.Module: ...

    def _writing(self) -> AbstractContextManager[None]:
        """`writing` for this model: inference mode when its weights are inference tensors."""
        firsts = (next(names[""].parameters(), None) for names in self._modules.values() if "" in names)
        return writing(any(p is not None and p.is_inference() for p in firsts))

    def _param(self, key: Key, fresh: bool = False) -> tuple[Tensor, Tensor | None]:
        """The weight (and bias) a key names; `fresh` looks again instead of using the cache."""
        found = None if fresh else self._params.get(key)
        if found is None:
            component, name, param = key
            module = self._modules[component].get(name)
            weight = _attribute(module, param)
            if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
                kind = f" (a {type(weight).__name__} of {weight.dtype}: a quantized format this patcher cannot write)" \
                    if isinstance(weight, torch.Tensor) else ""
                raise PatchError(f"{component}: module {name!r} has no floating-point {param!r} to patch{kind}")
            bias_name = "bias" if param == "weight" else param.replace("weight", "bias")
            bias = _attribute(module, bias_name)
            if weight.is_meta:  # accelerate's offload placeholder: the tensor its hook keeps is the one to write
                weight = stored(module, param, weight, f"{component}.{name}.{param}")
                bias = stored(module, bias_name, bias, f"{component}.{name}.{bias_name}") if isinstance(bias, torch.Tensor) else None
            found = (weight, bias if isinstance(bias, torch.Tensor) else None)
            old = self._params.get(key)
            if old is not None and old[0] is found[0] and old[1] is found[1]:
                return old
            self._params[key] = found
        return found

    def _follow(self, report: SyncReport) -> None:
        """Weights cast, moved, written or replaced since our last write (`BackupStore.follow`)."""
        stale, cast = self._store.follow(lambda key: (self._params[key], self._param(key, fresh=True)), report.diagnostics)
        for key in stale:
            self._applied.pop(key, None)
        self._claims.drop(stale)
        if stale or cast:
            self._deltas.clear()  # IA3, GLoRA, T-LoRA, OFT and DoRA deltas were computed from the old base

    def _parts(self, key: Key, contributions: tuple[Any, ...]) -> tuple[list[Part], list[Part], bool]:
        """Validated float32 (weight parts, bias parts) of one key on the weight's device, and
        whether every full delta among them is held by the cache (else the caller may drop them and
        compute them again)."""
        weight, bias = self._param(key)
        base_w, base_b = self._base(key, weight, bias)
        backup = self._store.get(key)
        # factors live where the weight's backup lives: with backups in host memory the card holds neither
        pinned = weight.is_cuda and (backup[0].device.type == "cpu" if backup is not None else self._store.policy == "host")
        return weight_parts(contributions, base_w, base_b, ".".join(key), self._deltas, device=weight.device,
                            pinned=pinned)

    def _scale(self, key: Key, weight: Tensor | None = None) -> Tensor | None:
        """The dequantisation scale of a scaled fp8 weight (`quantized.fp8_scale`), else None."""
        if weight is None:
            weight = self._param(key)[0]
        return fp8_scale(self._module_of(key), key[2], weight) if weight.element_size() == 1 else None

    def _base(self, key: Key, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The base values the deltas of `key` (whose weight and bias are given) are added to: its
        float copy (`float_base`) when there is one, else its backup, else the weight itself (not
        patched yet); a scaled fp8 one dequantised (fp8 · scale, in float32)."""
        backup = self._store.get(key)
        base_w = backup[0] if backup is not None else weight
        base_b = backup[1] if backup is not None and backup[1] is not None else bias
        if weight.element_size() != 1:  # the common case: neither a scale nor an fp8 float copy
            return base_w, base_b
        scale = self._scale(key, weight)
        if scale is not None:
            return base_w.to(weight.device).float() * scale.to(weight.device), base_b
        if self.float_base is not None and weight.element_size() == 1:
            module = self._module_of(key)
            param = key[2]
            found_w = self.float_base(module, param)
            found_b = self.float_base(module, "bias" if param == "weight" else param.replace("weight", "bias"))
            if found_w is not None and found_w.shape == weight.shape:
                base_w = found_w
            if found_b is not None and bias is not None and found_b.shape == bias.shape:
                base_b = found_b
        return base_w, base_b

    def _checked(self, key: Key, contributions: tuple[Any, ...]) -> tuple[list[Part], list[Part]] | None:
        """The parts of one key, validated; None when they are too big to hold until the write."""
        try:
            refused = fused_away(key[0], self._modules[key[0]], key[1])  # only for weights about to be written
            if refused is not None:
                raise refused
            w_parts, b_parts, kept = self._parts(key, contributions)
        except PatchError as exc:
            if exc.module is None and contributions:  # a bad target: blame its first adapter
                exc.module = contributions[0][0]
            raise
        return (w_parts, b_parts) if kept else None

    def _write_all(
        self, changed: list[Key], plan: Plan, parts: dict[Key, tuple[list[Part], list[Part]] | None],
        items: Sequence[Any] = (),
    ) -> None:
        """Write every changed weight; when one fails, put back those written, and (for an unexpected
        error, not a refused adapter, running out of memory or Ctrl-C) note on the error which weight
        and which of `items` (plan entries) it was."""
        before = dict(self._applied)
        written: list[Key] = []
        try:
            for key in changed:
                written.append(key)
                new = plan.get(key)
                self._write(key, (parts.get(key) or self._parts(key, new)[:2]) if new else None)
                if key in plan:
                    self._applied[key] = plan[key]
                else:
                    self._applied.pop(key, None)
        except BaseException as exc:
            self._rollback(written, before)
            if written and isinstance(exc, Exception) and not isinstance(exc, (PatchError, OutOfMemoryError)):
                _write_note(exc, written[-1], plan, items)
            raise
        if not self.keep_backups:
            for key in changed:
                if key not in plan:
                    self._store.drop(key)
                    for module, rows, _ in before.get(key, ()):  # unwatched now: a later base may differ
                        self._deltas.discard((module, rows))

    def _write(self, key: Key, parts: tuple[list[Part], list[Part]] | None) -> None:
        """Write base + parts into one weight (and its bias); base alone when parts is None."""
        weight, bias = self._param(key)
        backup = self._store.take(key, weight, bias if parts is not None and parts[1] else None)
        w_parts, b_parts = parts if parts is not None else ([], [])
        scale = self._scale(key, weight) if w_parts else None
        base_w, base_b = self._base(key, weight, bias) if (self.float_base is not None or scale is not None) and parts is not None else backup
        combine_into(weight, base_w if w_parts else backup[0], w_parts, self._float_scratch, scale)
        if backup[1] is not None and bias is not None:
            combine_into(bias, base_b if b_parts and base_b is not None else backup[1], b_parts, self._float_scratch)
        self._store.written(key, weight, bias)

    def _float_scratch(self, like: Tensor) -> Tensor:
        """A reused float32 buffer shaped like `like` (fresh allocations fault in every page); its
        views are kept per shape, as making one costs as much as a small kernel launch."""
        views = self._scratch.get(like.device)
        if views is None or views[_BUFFER].numel() < like.numel():
            views = self._scratch[like.device] = {
                _BUFFER: torch.empty(like.numel(), dtype=torch.float32, device=like.device)}
        view = views.get(like.shape)
        if view is None:
            view = views[like.shape] = views[_BUFFER][: like.numel()].view(like.shape)
        return view

    def _rollback(self, keys: list[Key], before: Plan) -> None:
        """Put `keys` back to their state in `before`; to base everywhere if that fails too."""
        try:
            for key in keys:
                old = before.get(key)
                self._write(key, self._parts(key, old)[:2] if old else None)
                if old:
                    self._applied[key] = old
                else:
                    self._applied.pop(key, None)
        except BaseException:
            for key in self._store:
                self._write(key, None)
            self._store.clear()
            self._applied.clear()
            raise


@contextmanager
def writing(inference: bool) -> Iterator[None]:
    """The span of a sync: autocast off, and inference mode on when the weights are inference
    tensors (a model loaded under torch.inference_mode, as ComfyUI loads them: torch refuses
    in-place writes to those outside it). A1111 activates networks and runs on_cfg_denoiser inside
    `devices.autocast()`; there, the out-of-place matmuls of LoHa, LoKr and DoRA deltas (and
    their factors) ran in fp16/bf16, so the weights differed from the same sync outside it and
    from `loraprompt merge`. Only the device types with autocast on are entered."""
    with ExitStack() as stack:
        if inference and not torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode())
        for device in ("cuda", "cpu", "xpu", "mps"):
            try:
                on = torch.is_autocast_enabled(device)
            except (TypeError, RuntimeError):  # torch < 2.4 takes no device; a device type it does not know
                legacy = {"cuda": torch.is_autocast_enabled, "cpu": torch.is_autocast_cpu_enabled}.get(device)
                on = legacy is not None and legacy()
            if on:
                stack.enter_context(torch.autocast(device, enabled=False))
        yield


def _write_note(exc: Exception, key: Key, plan: Plan, items: Sequence[Any]) -> None:
    """Say on `exc` which weight and which LoRAs (label and file) were being written; its type and
    message stay its own (a bug or a device fault, not the LoRA's: a PatchError names the LoRA itself)."""
    if not hasattr(exc, "add_note"):  # Python 3.11+
        return
    modules = {getattr(m, "extra", {}).get("parent", m) for m, _, _ in plan.get(key, ())}
    names = [f"{e.label} ({e.adapter.path})" for e in items if any(m in modules for m in e.adapter.modules.values())]
    exc.add_note(f"loraprompt: while writing {'.'.join(key)} for {', '.join(names) or 'the restore'}; "
                 "every weight is as it was before this sync")


def _attribute(module: Any, name: str) -> Any:
    """`getattr(module, name, None)`, a registered parameter looked up directly: nn.Module's
    `__getattr__` costs a microsecond, and every patched weight is looked up at each sync."""
    params = getattr(module, "_parameters", None) if module is not None else None
    found = params.get(name) if params is not None else None
    return found if found is not None else getattr(module, name, None)
