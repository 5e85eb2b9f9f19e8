"""The state loraprompt keeps inside A1111: library, adapter cache, one Patcher per loaded model.

No `modules.*` import here: the glue hands in the model's components and family, so this is
tested like any library code. One generation runs at a time in A1111 (its queue lock), and the
Patcher adds its own lock.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loraprompt.backups import BACKUPS
from loraprompt.cache import AdapterCache
from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import LoraPromptError
from loraprompt.infotext import lora_hash_name
from loraprompt.patcher import Patcher
from loraprompt.plan import PlanEntry
from loraprompt.syntax.values import Schedule

if TYPE_CHECKING:
    from torch import nn

    from loraprompt.adapters.types import Adapter
    from loraprompt.syntax.model import LoraActivation


@dataclass
class Applied:
    """What one activation did: `hashes` (infotext name -> 12-hex hash), the `paths` of the
    LoRA files actually patched in, and diagnostics."""

    hashes: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    backups: dict[str, int] = field(default_factory=dict)  # bytes of backups on "device" / "host"
    adapters: list[Adapter] = field(default_factory=list)  # the adapters patched in (their bundled embeddings)


def is_scheduled(a: LoraActivation, hires: bool) -> bool:
    """True when the activation's UNet strength depends on the sampling step."""
    unet = a.hr_unet if hires and a.hr_unet is not None else a.unet
    return isinstance(unet, Schedule) or a.start is not None or a.stop is not None


def plan_entry(a: LoraActivation, adapter: Adapter, hires: bool, total_steps: int) -> PlanEntry:
    """The patcher entry of one activation for one sampling pass of `total_steps` steps."""
    # The text encoder runs once per pass, before sampling: its strength is taken at the first
    # step the LoRA is active. start/stop, UNet schedules and block weights follow each step.
    first = a.start.resolve(total_steps) if a.start is not None else 0
    te = a.te_at(first, total_steps, hires=hires)  # includes lbw's BASE entry
    unet = a.unet_at(0, total_steps, hires=hires)
    unet_at = (lambda s, n: a.unet_at(s, n, hires=hires)) if is_scheduled(a, hires) else None
    block_at = (lambda b, s, n: a.unet_at(s, n, block=b, hires=hires)) if (a.blocks or a.groups) else None
    return PlanEntry(adapter, te=te, unet=unet, unet_at=unet_at, block_at=block_at, name=a.name)


class Runtime:
    """Applies parsed activations to A1111's model and remembers what it did."""

    def __init__(
        self,
        library: Callable[[], Any],
        cache_mb: float = 1024.0,
        delta_cache_mb: float = 1024.0,
        reader: Callable[[str], Adapter] | None = None,
        prefer_filename: Callable[[], bool] = lambda: False,
        *,
        backups: Callable[[], str] = lambda: "auto",
        no_hashing: Callable[[], bool] = lambda: False,
    ) -> None:
        self._library_factory = library
        self.prefer_filename = prefer_filename
        self.backups = backups
        self.no_hashing = no_hashing  # A1111's --no-hashing
        self._library: Any = None
        self.adapters = AdapterCache(cache_mb, reader)
        self.delta_cache_mb = delta_cache_mb
        self._patchers: weakref.WeakKeyDictionary[Any, Patcher] = weakref.WeakKeyDictionary()
        self._active: tuple[Patcher, list[PlanEntry]] | None = None
        self._known_hashes: dict[str, str] = {}  # 12-hex hash -> path, for every LoRA applied

    @property
    def library(self) -> Any:
        """The LoRA library, created on first use (a scan of the LoRA folders)."""
        if self._library is None:
            self._library = self._library_factory()
        return self._library

    def refresh(self) -> None:
        """Rescan the LoRA folders."""
        self.library.refresh()

    def patcher(self, sd_model: Any, components: Mapping[str, nn.Module], family: str | None) -> Patcher:
        """The Patcher of this model object (created on first use), with the backups setting now.
        Scheduled LoRAs run unfused (`on_cfg_denoiser` only sets each step's strengths); with
        A1111's "FP8 weight" and "Cache FP16 weight for LoRA", the deltas are added to the fp16
        copies A1111 keeps (`fp16_weight`, `fp16_bias`)."""
        patcher = self._patchers.get(sd_model)
        backups = self.backups()
        if patcher is None:
            patcher = Patcher(components, family=family, delta_cache_mb=self.delta_cache_mb, on_error="skip",
                              backups=backups if backups in BACKUPS else "auto", schedules="unfused",
                              float_base=_fp16_copy)
            self._patchers[sd_model] = patcher
        elif backups in BACKUPS:
            patcher.backups = backups
        return patcher

    def apply(
        self,
        sd_model: Any,
        components: Mapping[str, nn.Module],
        family: str | None,
        activations: Sequence[LoraActivation],
        *,
        hires: bool = False,
        total_steps: int = 20,
        profile: str = "loraprompt",
    ) -> Applied:
        """Make the model equal to base + exactly `activations` (an empty list restores)."""
        out = Applied()
        entries: list[PlanEntry] = []
        files: list[str] = []
        for a in activations:
            loaded = self._load(a, profile, out.diagnostics)
            if loaded is None:
                continue
            entry, adapter = loaded
            entries.append(plan_entry(a, adapter, hires, total_steps))
            files.append(entry.path)
            short = self._short_hash(entry)
            if short:
                out.hashes[lora_hash_name(a.name)] = short
            if a.dyn is not None:
                out.diagnostics.append(
                    Diagnostic("W-DYN-IGNORED", f"{a.name}: dyn={a.dyn} is not supported; the full rank is applied",
                               subject=a.name)
                )
        patcher = self.patcher(sd_model, components, family)
        self.restore(keep=patcher)
        report = patcher.sync(entries)
        out.diagnostics.extend(report.diagnostics)
        out.backups = report.backups
        for skipped in report.skipped:
            out.hashes.pop(lora_hash_name(skipped), None)
        kept = [e for e in entries if e.label not in report.skipped]
        out.adapters = [e.adapter for e in kept]
        out.paths = list(dict.fromkeys(f for f, e in zip(files, entries) if e.label not in report.skipped))
        self._active = (patcher, kept) if any(e.scheduled for e in kept) else None
        return out

    def note_use(self, paths: Iterable[str]) -> None:
        """Count one use of each LoRA file in the library's history ("most used" / "last used")."""
        self.library.note_use(paths)

    def step(self, step: int, total_steps: int) -> None:
        """Re-apply scheduled strengths for sampling `step` (a no-op without schedules)."""
        if self._active is not None:
            patcher, entries = self._active
            patcher.sync(entries, step=step, total_steps=total_steps)

    def restore(self, keep: Patcher | None = None) -> None:
        """Put every model back to its base weights (all but `keep`, which the caller syncs)."""
        for patcher in list(self._patchers.values()):
            if patcher is not keep and patcher.applied:
                patcher.restore()
        if keep is None:
            self._active = None

    def model_loaded(self, sd_model: Any) -> None:
        """A1111 says it (re)loaded `sd_model`. That is also said when only the VAE changed (the
        UNet and text encoders go to the CPU and back, their weights untouched: still patched) and
        when it switches back to a model kept in memory; so nothing is dropped here. The next sync
        (or restore) follows what happened to each patched weight: one A1111 wrote (a checkpoint
        loaded into the same object) becomes the new base and its backup is dropped; one it did
        not write, or only moved, keeps its backup, so the LoRA can still come off. Dropping every
        backup here baked the LoRA of the last image into the model on a VAE change."""
        patcher = self._patchers.get(sd_model)
        if patcher is not None and self._active is not None and self._active[0] is patcher:
            self._active = None  # a generation's step schedule syncs again from its next activation

    def lookup_hash(self, short: str) -> str | None:
        """The local name of the LoRA with A1111 hash `short` (only hashes already known, as A1111)."""
        found = self.library.find_by_hash(short, compute=False)
        path = self._known_hashes.get(short.strip().lower()[:12])
        if not found and path is not None:
            found = [e for e in library_entries(self.library) if e.path == path]
        return self.display_name(found[0]) if found else None

    def display_name(self, entry: Any) -> str:
        """The name cards and pasted infotext use for `entry`: its alias, or the file stem when
        A1111's `lora_preferred_name` says "Filename" (A1111's `get_alias`)."""
        return str(self.library.display_name(entry, prefer_filename=self.prefer_filename()))

    def _load(self, a: LoraActivation, profile: str, diagnostics: list[Diagnostic]) -> tuple[Any, Adapter] | None:
        resolution = self.library.resolve(a.name, hash=a.hash, profile=profile)
        diagnostics.extend(resolution.diagnostics)
        if resolution.entry is None:
            if not resolution.diagnostics:
                diagnostics.append(Diagnostic("E-NOT-FOUND", f"LoRA not found: {a.name}", severity="error", subject=a.name))
            return None
        try:
            return resolution.entry, self.adapters.get(resolution.entry.path)
        except (LoraPromptError, OSError) as exc:
            diagnostics.append(Diagnostic("E-ADAPTER-FILE", f"{a.name}: {exc}", severity="error", subject=a.name))
            return None

    def _short_hash(self, entry: Any) -> str | None:
        """The `Lora hashes` value of `entry`; with A1111's --no-hashing only a hash known already
        (as A1111's hashes.sha256: the cache, else None), no file read in full."""
        try:
            full = self.library.hashes(entry, compute=not self.no_hashing()).get("a1111")
        except (LoraPromptError, OSError):
            return None
        if not full:
            return None
        self._known_hashes[str(full)[:12]] = entry.path
        return str(full)[:12]


def _fp16_copy(module: nn.Module, param: str) -> Any:
    """A1111's CPU fp16 copy of an fp8 weight or bias (made with "Cache FP16 weight for LoRA")."""
    return getattr(module, f"fp16_{param}", None)


def library_entries(library: Any) -> Iterable[Any]:
    """The library's entries, whether it exposes them as a list or a mapping."""
    entries = library.entries
    return entries.values() if isinstance(entries, Mapping) else entries
