"""The one module that writes model weights: diffed sync against exact backups.

`Patcher.sync(entries)` makes the model equal to base + exactly those adapters: every delta of the
new plan is computed and checked (float32, on the weight's device) before anything is written; each
weight whose contributions changed gets base + Σ strength·Δ, cast once (`loraprompt.combine`,
which the merge tool shares). Restoring copies backups back (never a subtraction); an exception
while writing puts every weight back as it was."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.cache import DeltaCache
from loraprompt.combine import Part, combine_into, weight_parts
from loraprompt.errors import PatchError
from loraprompt.keymaps import keymap_for_module
from loraprompt.keymaps.check import model_family
from loraprompt.plan import Key, Plan, PlanEntry, SyncReport, as_entry, build_plan, resolve_adapter

if TYPE_CHECKING:
    from torch import Tensor, nn

    from loraprompt.keymaps import KeyMap
    from loraprompt.plan import Resolution


class Patcher:
    """Applies adapters to `components` ("unet", "text_encoder", "text_encoder_2" -> nn.Module).

    `family` is "sd1", "sd2" or "sdxl" (detected from the modules when None; "" disables the
    check). `delta_cache_mb` bounds the cached float32 deltas of algorithms other than plain
    LoRA (those are written straight from their factors). `on_error` is "raise" (default: a bad
    adapter refuses the whole sync, the model untouched) or "skip" (drop that adapter, report it).
    `keep_backups` keeps the backup of a weight after restoring it (memory: the touched weights,
    once), so the next apply is a single write; a weight changed in place behind the patcher's back
    (its tensor version moved) has its backup dropped and becomes the new base.
    """

    def __init__(
        self, components: Mapping[str, nn.Module | None], *, family: str | None = None,
        delta_cache_mb: float = 512.0, on_error: str = "raise", keep_backups: bool = True,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.lock = threading.RLock()
        self.on_error = on_error
        self.keep_backups = keep_backups
        self._deltas = DeltaCache(delta_cache_mb)
        self._family_override = family
        self._setup(components)

    def _setup(self, components: Mapping[str, nn.Module | None]) -> None:
        self.components: dict[str, nn.Module] = {k: v for k, v in components.items() if v is not None}
        self._modules = {c: dict(m.named_modules()) for c, m in self.components.items()}
        self._keymaps: dict[str, KeyMap] = {c: keymap_for_module(c, m) for c, m in self.components.items()}
        detected = model_family(self._keymaps)
        self.family = detected if self._family_override is None else (self._family_override or None)
        self._params: dict[Key, tuple[Tensor, Tensor | None]] = {}
        self._backups: dict[Key, tuple[Tensor, Tensor | None]] = {}
        self._versions: dict[Key, tuple[int, int]] = {}
        self._applied: Plan = {}
        self._resolved: dict[int, Resolution] = {}
        self._failed: dict[int, tuple[Any, PatchError]] = {}
        self._deltas.clear()
        self._scratch: dict[torch.device, Tensor] = {}

    @property
    def applied(self) -> Plan:
        """Weight key -> contributions applied now."""
        return dict(self._applied)

    @property
    def backup_nbytes(self) -> int:
        """Bytes held by backups (exactly the touched weights)."""
        return sum(t.numel() * t.element_size() for pair in self._backups.values() for t in pair if t is not None)

    def restore(self, *, release: bool = False) -> SyncReport:
        """Copy every backup back: the model is bit-identical to before the first sync;
        `release` also frees the backups."""
        with self.lock:
            report = self.sync([])
            if release:
                self._backups.clear()
                self._versions.clear()
                self._deltas.clear()  # unwatched from now on: a later base may differ
            return report

    def forget(self, components: Mapping[str, nn.Module | None] | None = None) -> None:
        """Drop every backup, cache and mapping without writing (the model was replaced); use
        `components` from now on when given."""
        with self.lock:
            self._setup(self.components if components is None else components)

    @contextmanager
    def activated(self, entries: Iterable[Any], *, restore: bool = True) -> Iterator[SyncReport]:
        """Hold the lock, sync `entries`, yield the report, restore on exit (unless restore=False)."""
        with self.lock:
            try:
                yield self.sync(entries)
            finally:
                if restore:
                    self.restore()

    def sync(
        self, entries: Iterable[Any], *, step: int | None = None, total_steps: int | None = None,
        on_error: str | None = None,
    ) -> SyncReport:
        """Make the weights equal to base + exactly `entries` ((adapter, te, unet) tuples or
        PlanEntry), at `step` of `total_steps` for scheduled entries. Only changed weights are
        written. Raises PatchError (the model as it was) when an adapter cannot apply, unless
        `on_error` (default: the patcher's) is "skip"."""
        skip = (on_error or self.on_error) == "skip"
        with self.lock, torch.no_grad():
            report = SyncReport()
            self._check_versions(report)
            items = [as_entry(e) for e in entries]
            while True:
                plan = self._plan(items, step, total_steps, report, skip)
                changed = [k for k in plan if plan[k] != self._applied.get(k)]
                changed += [k for k in self._applied if k not in plan]
                self._deltas.generation += 1
                try:
                    parts = {k: self._checked(k, plan[k]) for k in changed if k in plan}
                except PatchError as exc:
                    entry = self._owner(exc, items)
                    if entry is None:
                        raise
                    named = PatchError(f"{entry.label} ({entry.adapter.path}): {exc}")
                    if not skip:
                        raise named from exc
                    self._skip(entry, named, report)
                    items = [e for e in items if e is not entry]
                    continue
                break
            self._write_all(changed, plan, parts)
            report.written = len(changed)
            report.patched = len(self._applied)
            return report

    def _plan(
        self, items: list[PlanEntry], step: int | None, total: int | None, report: SyncReport, skip: bool
    ) -> Plan:
        resolved = []
        for entry in list(items):
            try:
                resolution = self._resolve(entry)
            except PatchError as exc:
                if not skip:
                    raise
                self._skip(entry, exc, report)
                items.remove(entry)
                continue
            report.diagnostics.extend(resolution.diagnostics)
            resolved.append((resolution, *entry.strengths(step, total)))
        return build_plan(resolved)

    def _resolve(self, entry: PlanEntry) -> Resolution:
        adapter = entry.adapter
        failed = self._failed.get(id(adapter))
        if failed is not None and failed[0] is adapter:
            raise failed[1]
        cached = self._resolved.get(id(adapter))
        if cached is not None and cached.adapter is adapter:
            return cached
        keymaps = {c: self._keymaps[c] for c in adapter.components() if c in self.components}
        resolution = resolve_adapter(adapter, keymaps, self.family, entry.label)
        if len(self._resolved) >= 64:
            self._resolved.clear()
            self._failed.clear()
        self._resolved[id(adapter)] = resolution
        return resolution

    def _skip(self, entry: PlanEntry, exc: PatchError, report: SyncReport) -> None:
        from loraprompt.diagnostics import Diagnostic

        self._failed[id(entry.adapter)] = (entry.adapter, exc)
        report.skipped.append(entry.label)
        report.diagnostics.append(
            Diagnostic("lora-refused", str(exc), severity="error", subject=entry.adapter.path)
        )

    def _owner(self, exc: PatchError, items: list[PlanEntry]) -> PlanEntry | None:
        module = getattr(exc, "module", None)
        key = getattr(module, "lora_key", None)
        return next((e for e in items if key is not None and e.adapter.modules.get(key) is module), None)

    def _param(self, key: Key, fresh: bool = False) -> tuple[Tensor, Tensor | None]:
        """The weight (and bias) a key names; `fresh` looks again instead of using the cache."""
        found = None if fresh else self._params.get(key)
        if found is None:
            component, name, param = key
            module = self._modules[component].get(name)
            weight = getattr(module, param, None)
            if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
                raise PatchError(f"{component}: module {name!r} has no floating-point {param!r} to patch")
            bias = getattr(module, "bias" if param == "weight" else param.replace("weight", "bias"), None)
            found = self._params[key] = (weight, bias if isinstance(bias, torch.Tensor) else None)
        return found

    def _parts(self, key: Key, contributions: tuple[Any, ...]) -> tuple[list[Part], list[Part], bool]:
        """Validated float32 (weight parts, bias parts) of one key, and whether every full delta
        among them is held by the cache (else the caller may drop them and compute them again)."""
        weight, bias = self._param(key)
        backup = self._backups.get(key)
        base_w = backup[0] if backup is not None else weight
        base_b = backup[1] if backup is not None and backup[1] is not None else bias
        return weight_parts(contributions, base_w, base_b, ".".join(key), self._deltas)

    def _checked(self, key: Key, contributions: tuple[Any, ...]) -> tuple[list[Part], list[Part]] | None:
        """The parts of one key, validated; None when they are too big to hold until the write."""
        try:
            w_parts, b_parts, kept = self._parts(key, contributions)
        except PatchError as exc:
            if getattr(exc, "module", None) is None and contributions:  # a bad target: blame its first adapter
                exc.module = contributions[0][0]  # type: ignore[attr-defined]
            raise
        return (w_parts, b_parts) if kept else None

    def _write_all(
        self, changed: list[Key], plan: Plan, parts: dict[Key, tuple[list[Part], list[Part]] | None]
    ) -> None:
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
        except BaseException:
            self._rollback(written, before)
            raise
        if not self.keep_backups:
            for key in changed:
                if key not in plan:
                    del self._backups[key]
                    del self._versions[key]
                    for module, rows, _ in before.get(key, ()):  # unwatched now: a later base may differ
                        self._deltas.discard((module, rows))

    def _check_versions(self, report: SyncReport) -> None:
        """Follow weights moved or cast since our last write (`.to()`: the backups follow); drop
        the backups of weights written or replaced by someone else (they become the new base)."""
        stale = []
        for key, (w_backup, b_backup) in list(self._backups.items()):
            old = self._params[key]
            weight, bias = self._param(key, fresh=True)
            replaced = old[0] is not weight or old[1] is not bias  # new parameters: a new model
            if not replaced and (w_backup.device, w_backup.dtype) != (weight.device, weight.dtype):
                self._backups[key] = (w_backup.to(weight), None if b_backup is None or bias is None else b_backup.to(bias))
                self._versions[key] = _versions(weight, bias)
                self._deltas.clear()
            elif replaced or _versions(weight, bias) != self._versions.get(key):
                stale.append(key)
                del self._backups[key], self._versions[key]
                self._applied.pop(key, None)
        if stale:
            from loraprompt.diagnostics import Diagnostic

            self._deltas.clear()  # IA3, GLoRA, OFT and DoRA deltas were computed from the old base

            report.diagnostics.append(Diagnostic("lora-model-changed", severity="info", message=(
                f"{len(stale)} weights were changed outside the patcher (e.g. {'.'.join(stale[0])}); "
                "their backups were dropped and their current values are the new base")))

    def _write(self, key: Key, parts: tuple[list[Part], list[Part]] | None) -> None:
        """Write base + parts into one weight (and its bias); base alone when parts is None."""
        weight, bias = self._param(key)
        backup = self._backups.get(key)
        if backup is None:
            backup = self._backups[key] = (weight.detach().clone(), None)
        if parts is not None and parts[1] and backup[1] is None and bias is not None:
            backup = self._backups[key] = (backup[0], bias.detach().clone())
        w_parts, b_parts = parts if parts is not None else ([], [])
        combine_into(weight, backup[0], w_parts, self._float_scratch)
        if backup[1] is not None and bias is not None:
            combine_into(bias, backup[1], b_parts, self._float_scratch)
        self._versions[key] = _versions(weight, bias)

    def _float_scratch(self, like: Tensor) -> Tensor:
        """A reused float32 buffer shaped like `like` (fresh allocations fault in every page)."""
        buf = self._scratch.get(like.device)
        if buf is None or buf.numel() < like.numel():
            buf = self._scratch[like.device] = torch.empty(like.numel(), dtype=torch.float32, device=like.device)
        return buf[: like.numel()].view(like.shape)

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
            for key in list(self._backups):
                self._write(key, None)
            self._backups.clear()
            self._versions.clear()
            self._applied.clear()
            raise


def _versions(weight: Tensor, bias: Tensor | None) -> tuple[int, int]:
    """The tensors' in-place write counters."""
    return weight._version, -1 if bias is None else bias._version
