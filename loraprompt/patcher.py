"""The one module that writes model weights: diffed sync against exact backups.

`Patcher.sync(entries)` makes the model equal to base + exactly those adapters: every delta of the
new plan is computed and checked (float32, on the weight's device) before anything is written; each
weight whose contributions changed gets base + Σ strength·Δ, cast once (`loraprompt.combine`,
which the merge tool shares). Restoring copies backups back (never a subtraction); an exception
while writing puts every weight back as it was, and running out of device memory says how much
was needed and which setting to change.

On a GPU the backups live on the card or in pinned host memory (`backups=`), restored with
non-blocking copies; nothing on the hot path waits for the device (no `.item()` or tensor truth
tests per weight: adapters are checked once, on the CPU, when resolved). With
`schedules="unfused"`, LoRAs whose UNet strength changes during sampling are not written at all:
their low-rank path runs in the modules' forward (`loraprompt.unfused`) with each step's strength."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from loraprompt.backups import BackupStore, MiB, OutOfMemoryError, checked_policy
from loraprompt.cache import DeltaCache
from loraprompt.errors import ModelStateError, PatchError
from loraprompt.keymaps import keymap_for_module
from loraprompt.keymaps.check import model_family
from loraprompt.owners import Claims
from loraprompt.placement import fused_away
from loraprompt.plan import (
    Key,
    Plan,
    PlanEntry,
    SyncReport,
    as_entry,
    build_plan,
    checked_components,
    refused,
    resolve_adapter,
)
from loraprompt.quantized import Unfused, weight_path
from loraprompt.unfused import LowRankHooks, unfusable
from loraprompt.writes import Writes

SCHEDULES = ("fused", "unfused")
DENOISERS = ("unet", "transformer")  # the components a LoRA's UNet strength (and its schedule) applies to

if TYPE_CHECKING:
    from torch import Tensor, nn

    from loraprompt.diagnostics import Diagnostic
    from loraprompt.keymaps import KeyMap
    from loraprompt.plan import Resolution


class Patcher(Writes):
    """Applies adapters to `components` ("unet", "text_encoder", "text_encoder_2" -> nn.Module).

    `family` is "sd1", "sd2" or "sdxl" (detected from the modules when None; "" disables the
    check). `delta_cache_mb` bounds the cached float32 deltas of algorithms other than plain
    LoRA and the plain LoRAs' factors (written straight from them). The default, 1024 MB (the A1111
    setting's), holds the factors of two LoRAs on every attention/FF layer of SDXL at rank 32
    (650 MB) or Flux.1 at rank 16 (500 MB), so switching between them rebuilds none. `on_error` is
    "raise" (default: a bad adapter refuses the whole sync, the model untouched) or "skip" (drop
    that adapter, report it). `keep_backups` keeps the backup of a weight after restoring it
    (memory: the touched weights, once), so the next apply is a single write; a weight changed in
    place behind the patcher's back (its tensor version moved) has its backup dropped and becomes
    the new base.

    `backups` says where the backups (a `BackupStore`) of weights on a GPU live: "device"
    (fastest, costs VRAM), "host" (pinned CPU memory, non-blocking restores; pageable, with a
    diagnostic, when pinning is refused) or "auto" (on the device while its free memory stays
    above `reserve_mb`, else on the host, weight by weight; a device backup that runs out of
    memory goes to the host). Weights on the CPU are backed up in CPU memory whatever the
    setting. A model moved between syncs (`.to()`, A1111's --medvram/--lowvram) keeps its backups
    where they are.

    `schedules="unfused"` runs the UNet (or SD3/Flux/Wan transformer) modules of LoRAs whose UNet
    strength changes during sampling (entries with `unet_at`: start/stop, keyframes) unfused: their
    plain-LoRA factors are added in the module's forward with the step's strength, so a step costs
    two small matmuls per module instead of rewriting weights; constant LoRAs stay fused. Packed
    4-bit (bitsandbytes) weights take the same forward path, their bytes untouched. The default
    "fused" writes every step's weights (the weights then always equal base + the plan).

    `float_base(module, param)` may return a higher-precision copy of a low-precision (fp8)
    weight, which the deltas are then added to (A1111's "Cache FP16 weight for LoRA"); the
    backups stay the weights themselves, so a restore is still bit-exact.
    """

    def __init__(
        self, components: Mapping[str, nn.Module | None], *, family: str | None = None,
        delta_cache_mb: float = 1024.0, on_error: str = "raise", keep_backups: bool = True,
        backups: str = "auto", reserve_mb: float = 1024.0, schedules: str = "fused",
        float_base: Callable[[nn.Module, str], Tensor | None] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if schedules not in SCHEDULES:
            raise ValueError(f"schedules must be 'fused' or 'unfused', not {schedules!r}")
        self.lock = threading.RLock()
        self.on_error = on_error
        self.keep_backups = keep_backups
        self._store = BackupStore(backups, int(reserve_mb * MiB))
        self._fast: tuple[list[Any], list[tuple[PlanEntry, Resolution]]] | None = None
        self._schedules = schedules
        self.float_base = float_base
        self._hooks = LowRankHooks()
        self._deltas = DeltaCache(delta_cache_mb)
        self._family_override = family
        self._setup(components)

    def _setup(self, components: Mapping[str, nn.Module | None]) -> None:
        checked_components(components, self._family_override)
        for previous in (getattr(self, "_packed", None), getattr(self, "_claims", None)):
            if previous is not None:
                previous.clear()
        self._claims = Claims(self)  # the weights patched now, so that another Patcher's sync refuses them
        self.components: dict[str, nn.Module] = {k: v for k, v in components.items() if v is not None}
        self._modules = {c: dict(m.named_modules()) for c, m in self.components.items()}
        self._packed = Unfused(self._modules)  # packed 4-bit weights: the LoRA beside them
        self._packed_next: tuple[Plan, Plan] = ({}, {})  # (beside packed weights in hooks, by the low-rank path)
        self._keymaps: dict[str, KeyMap] = {c: keymap_for_module(c, m) for c, m in self.components.items()}
        detected = model_family(self._keymaps)
        self.family = detected if self._family_override is None else (self._family_override or None)
        self._params: dict[Key, tuple[Tensor, Tensor | None]] = {}
        self._store.clear()
        self._applied: Plan = {}
        self._resolved: dict[int, Resolution] = {}
        self._failed: dict[int, tuple[Any, PatchError]] = {}
        self._deltas.clear()
        self._scratch: dict[torch.device, dict[torch.Size, Tensor]] = {}  # the buffer (_BUFFER) and its views
        self._splits: dict[int, tuple[Resolution, Resolution, Resolution]] = {}
        self._fast = None
        self._paths: dict[str, str] = {}
        self._weight_paths: dict[Key, tuple[str, str]] = {}  # applied key -> (its name, how it is patched)
        self._hooks.clear()

    @property
    def schedules(self) -> str:
        """"fused" or "unfused" (see the class docstring); takes effect at the next sync."""
        return self._schedules

    @schedules.setter
    def schedules(self, value: str) -> None:
        if value not in SCHEDULES:
            raise ValueError(f"schedules must be 'fused' or 'unfused', not {value!r}")
        with self.lock:
            self._schedules = value
            self._fast = None

    @property
    def backups(self) -> str:
        """Where backups taken from now on live: "auto", "device" or "host" (see the class docstring)."""
        return self._store.policy

    @backups.setter
    def backups(self, value: str) -> None:
        self._store.policy = checked_policy(value)

    @property
    def backup_nbytes(self) -> int:
        """Bytes held by backups (exactly the touched weights)."""
        return self._store.nbytes

    @property
    def backup_bytes(self) -> dict[str, int]:
        """Bytes of backups on a GPU ("device") and in CPU memory ("host")."""
        return self._store.by_place()

    @property
    def applied(self) -> Plan:
        """Weight key -> contributions applied now."""
        return dict(self._applied)

    def restore(self, *, release: bool = False) -> SyncReport:
        """Copy every backup back (and remove the unfused modules' hooks): the model is
        bit-identical to before the first sync; `release` also frees the backups."""
        with self.lock:
            report = self.sync([])
            if release:
                self._store.clear()
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
        """Make the weights equal to base + exactly `entries` ((adapter, te, unet), (adapter, a
        LoraActivation of `parse`) or PlanEntry), at `step` of `total_steps` for scheduled
        entries; only changed weights are written. PatchError (the model as it was) when an
        adapter cannot apply, unless `on_error` (default: the patcher's) is "skip"."""
        skip = (on_error or self.on_error) == "skip"
        with self.lock, torch.no_grad(), self._writing():
            given = list(entries)
            fast = self._fast
            if step is not None and fast is not None and len(fast[0]) == len(given) and all(
                    a is b or (type(a) is tuple and a == b) for a, b in zip(fast[0], given)):
                return self._step_strengths(fast[1], step, total_steps)
            self._fast = None
            items = [as_entry(e) for e in given]
            report, built = SyncReport(), self._deltas.factors_built
            self._follow(report)
            self._store.new_sync()
            while True:
                plan, unfused, hooked = self._plan(items, step, total_steps, report, skip)
                changed = [k for k in plan if plan[k] != self._applied.get(k)]
                changed += [k for k in self._applied if k not in plan]
                self._deltas.generation += 1
                try:
                    parts = {k: self._checked(k, plan[k]) for k in changed if k in plan}
                    self._claims.check({k: self._param(k)[0] for k in parts if k not in self._applied})
                    for key, contributions in unfused.items():
                        self._hooks.check(key, self._modules[key[0]], contributions, self._deltas)
                    self._write_all(changed, plan, parts, items)  # puts every weight back when it fails
                except PatchError as exc:
                    entry = self._owner(exc, items)
                    if entry is None:
                        raise
                    named = type(exc)(f"{entry.label} ({entry.adapter.path}): {exc}", module=exc.module)  # its kind kept
                    if not skip:
                        raise named from exc
                    self._skip(entry, named, report)
                    items = [e for e in items if e is not entry]
                    continue
                except OutOfMemoryError as exc:
                    raise self._store.out_of_memory(changed, plan, exc, self._param) from exc
                break
            report.unfused = self._hooks.update(
                {k: self._module_of(k) for k in unfused}, unfused, self._deltas
            )
            moved = self._packed.apply(*self._packed_next)  # packed 4-bit weights: the LoRA beside them
            self._claims.update(changed, self._applied, self._params)
            report.written = len(changed) + moved
            report.factors_built = self._deltas.factors_built - built
            report.patched = len(self._applied) + len(self._packed)
            if self._store.changed:  # backups taken, cast or dropped: the paths may differ
                self._weight_paths.clear()
            for key in list(self._applied) if not self._weight_paths else changed:  # O(changed), not O(patched)
                if key in self._applied:
                    weight = self._param(key)[0]
                    self._weight_paths[key] = (".".join(key), weight_path(weight, self._scale(key, weight)))
                else:
                    self._weight_paths.pop(key, None)
            report.paths = dict(self._weight_paths.values())
            report.paths |= {".".join(k): path for k, path in self._packed.paths().items()}
            self._paths = report.paths
            report.backups = self._store.by_place()
            report.diagnostics.extend(self._store.notes)
            self._store.notes.clear()
            if hooked is not None and unfused and len(items) == len(given):  # none skipped
                self._fast = (given, hooked)
            return report

    def check(self, entries: Iterable[Any]) -> list[Diagnostic]:
        """What a sync of `entries` would refuse or warn about, without writing or keeping
        anything: each adapter resolved against this model (its family, the modules it matches
        and whether they still run, the keys it leaves), a refusal as an error naming the file.
        A shape that does not fit inside a matched module shows only when a sync computes the deltas."""
        out: list[Diagnostic] = []
        with self.lock:
            for entry in map(as_entry, entries):
                try:
                    resolution = resolve_adapter(entry.adapter, self._keymaps, self.family, entry.label)
                    out.extend(resolution.diagnostics)
                    gone = next(filter(None, (fused_away(k[0], self._modules[k[0]], k[1]) for _, k, _, _ in resolution.items)), None)
                    out.extend([refused(entry, gone)] if gone is not None else [])  # a module fused away, as a sync refuses it
                except PatchError as exc:
                    out.append(refused(entry, exc))
        return out

    def _step_strengths(self, hooked: list[tuple[PlanEntry, Resolution]], step: int, total: int | None) -> SyncReport:
        """A sync between sampling steps whose only change is the strength of unfused LoRAs: the
        hooks get the step's strengths (Python floats), nothing else is looked at or written. A
        weight changed behind the patcher's back meanwhile is noticed at the next full sync (tensor
        versions only grow): checking ~1000 weights per step would cost more than the LoRA."""
        strengths: dict[Key, list[float]] = {}
        for entry, resolution in hooked:
            _, unet_for = entry.strengths(step, total)
            per_block: dict[str | None, float] = {}
            for _, key, _, block in resolution.items:
                strength = per_block.get(block)
                if strength is None:
                    strength = per_block[block] = unet_for(block)
                strengths.setdefault(key, []).append(strength)
        self._hooks.set_strengths(strengths)
        return SyncReport(patched=len(self._applied) + len(self._packed), unfused=len(self._hooks),
                          backups=self._store.by_place(), paths=self._paths)

    def _plan(
        self, items: list[PlanEntry], step: int | None, total: int | None, report: SyncReport, skip: bool
    ) -> tuple[Plan, Plan, list[tuple[PlanEntry, Resolution]] | None]:
        """(the fused plan; the unfused one: UNet modules of scheduled entries run in the forward;
        those entries with their unfused part when the fused plan cannot change by step, else None)."""
        resolved, unfused_items = [], []
        hooked_entries: list[tuple[PlanEntry, Resolution]] | None = []
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
            te, unet = entry.strengths(step, total)
            # a UNet strength that follows the step (unet_at); static block weights (block_at
            # alone) stay fused, and a block_at that does change per step is rewritten per step
            if self.schedules == "unfused" and entry.unet_at is not None:
                fused, hooked = self._split(resolution)
                if hooked.items:
                    unfused_items.append((hooked, te, unet))
                    if hooked_entries is not None:
                        hooked_entries.append((entry, hooked))
                if any(item[1][0] in DENOISERS for item in fused.items):
                    hooked_entries = None  # fused UNet/transformer modules follow the step too
                resolution = fused
            elif entry.scheduled:
                hooked_entries = None
            if entry.te_at is not None:
                hooked_entries = None
            resolved.append((resolution, te, unet))
        unfused = build_plan(unfused_items, keep_zero=True)
        plan, beside, lowrank = self._packed.split(build_plan(resolved))
        for key, contributions in lowrank.items():  # packed weights' constant plain LoRAs: the same forward path
            if key in unfused:  # with a scheduled one: their strengths go in together, at every step
                unfused[key] += contributions
                hooked_entries = None
            else:
                unfused[key] = contributions
        self._packed_next = (beside, lowrank)
        return plan, unfused, hooked_entries

    def _split(self, resolution: Resolution) -> tuple[Resolution, Resolution]:
        """(the fused part, the unfused part) of a scheduled adapter's resolution, worked out once."""
        found = self._splits.get(id(resolution))
        if found is None or found[0] is not resolution:
            hooked = [item for item in resolution.items if self._unfusable(item)]
            fused = [item for item in resolution.items if not self._unfusable(item)]
            found = self._splits[id(resolution)] = (
                resolution, replace(resolution, items=fused), replace(resolution, items=hooked))
        return found[1], found[2]

    def _unfusable(self, item: tuple[Any, Key, tuple[int, int] | None, str | None]) -> bool:
        module, key, rows, _ = item
        return key[0] in DENOISERS and key[2] == "weight" and unfusable(module, self._module_of(key), rows)

    def _module_of(self, key: Key) -> nn.Module:
        return self._modules[key[0]][key[1]]

    def _resolve(self, entry: PlanEntry) -> Resolution:
        adapter = entry.adapter
        failed = self._failed.get(id(adapter))
        if failed is not None and failed[0] is adapter:
            raise failed[1]
        cached = self._resolved.get(id(adapter))
        if cached is not None and cached.adapter is adapter:
            return cached
        keymaps = self._keymaps
        resolution = resolve_adapter(adapter, keymaps, self.family, entry.label)
        if len(self._resolved) >= 64:
            self._resolved.clear()
            self._failed.clear()
            self._splits.clear()
        self._resolved[id(adapter)] = resolution
        return resolution

    def _skip(self, entry: PlanEntry, exc: PatchError, report: SyncReport) -> None:
        if not isinstance(exc, ModelStateError):  # a refusal for the model's state now is asked again next sync
            self._failed[id(entry.adapter)] = (entry.adapter, exc)
        report.skipped.append(entry.label)
        report.diagnostics.append(refused(entry, exc))

    def _owner(self, exc: PatchError, items: list[PlanEntry]) -> PlanEntry | None:
        module = getattr(exc.module, "extra", {}).get("parent", exc.module)  # a row slice of a fused file module
        key = getattr(module, "lora_key", None)
        return next((e for e in items if key is not None and e.adapter.modules.get(key) is module), None)
