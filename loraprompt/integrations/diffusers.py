"""loraprompt for diffusers SD1.x/SD2.x/SDXL, SD3 and Flux.1 pipelines.

    with loraprompt.activate(pipe, "a cat <lora:style:0.8>", library="models/Lora") as prompt:
        image = pipe(prompt).images[0]

The tags are parsed and stripped, each LoRA is resolved in the library, read (through a bounded
cache) and applied to the pipeline's UNet (or transformer) and text encoders for the duration of the block; on exit
the weights are copied back bit-exactly. Step schedules (`start=`/`stop=`, keyframed weights) are
followed during sampling by a forward pre-hook on the UNet (or transformer) that re-syncs before each step: a
scheduled LoRA's plain-LoRA modules run unfused (their low-rank path in the forward, with the
step's strength: no weight is rewritten, see `loraprompt.unfused`) while constant LoRAs stay fused;
`schedules="fused"` rewrites the changed weights each step instead.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from loraprompt.adapters.types import COMPONENTS, Adapter
from loraprompt.backups import BACKUPS
from loraprompt.cache import AdapterCache
from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import AdapterFileError
from loraprompt.integrations.embeddings import apply_embeddings
from loraprompt.patcher import Patcher
from loraprompt.plan import PlanEntry, SyncReport, entry_for, is_static

__all__ = ["DEFAULT_CACHE", "ActivePrompt", "activate", "entry_for", "patcher_for"]

DEFAULT_CACHE = AdapterCache(limit_mb=2048)
DEFAULT_STEPS = 50  # diffusers' default num_inference_steps: the TE's step-0 value needs a total

_PATCHERS: weakref.WeakKeyDictionary[Any, Patcher] = weakref.WeakKeyDictionary()
_BY_DENOISER: weakref.WeakKeyDictionary[Any, Patcher] = weakref.WeakKeyDictionary()  # UNet/transformer -> its Patcher
_PATCHERS_LOCK = threading.Lock()  # held to find or make a pipeline's Patcher, never while patching
_LIBRARIES_LOCK = threading.Lock()
_LIBRARY_LIMIT = 8  # Library objects kept (least recently used dropped first)
_LIBRARIES: OrderedDict[tuple[str, ...], Any] = OrderedDict()


class ActivePrompt(str):
    """The prompt with its tags stripped (pass it to the pipeline), plus what happened:
    `parsed`, `entries` (the applied PlanEntry list), `report`, `diagnostics`, and `steps`: the
    report of each sampling step's re-sync when a schedule is followed (empty otherwise)."""

    parsed: Any
    entries: list[PlanEntry]
    report: SyncReport
    diagnostics: list[Diagnostic]
    steps: list[SyncReport]

    def __new__(
        cls, text: str, parsed: Any, entries: list[PlanEntry], report: SyncReport, diagnostics: list[Diagnostic],
        *, steps: list[SyncReport],
    ) -> ActivePrompt:
        self = super().__new__(cls, text)
        self.parsed, self.entries, self.report, self.diagnostics = parsed, entries, report, diagnostics
        self.steps = steps
        return self


def patcher_for(pipe: Any, *, backups: str | None = None) -> Patcher:
    """The pipeline's Patcher; a new model (a replaced component) restores and forgets the old.
    `backups` ("auto", "device" or "host", see Patcher) sets where the backups of weights taken
    from now on live (default "auto": on the GPU while it has room to spare)."""
    components = {name: getattr(pipe, name, None) for name in COMPONENTS}
    components = {k: v for k, v in components.items() if v is not None}
    if backups is not None and backups not in BACKUPS:
        raise ValueError(f"backups must be one of {', '.join(BACKUPS)}, not {backups!r}")
    denoiser = components.get("unet", components.get("transformer"))
    with _PATCHERS_LOCK:  # one Patcher (one lock) per pipeline, however many threads ask at once
        patcher = _PATCHERS.get(pipe)
        created = False
        if patcher is None:
            # pipelines built from one set of components (from_pipe, **pipe.components) share its
            # Patcher: two would each take the other's writes for the base (loraprompt.owners)
            patcher = _BY_DENOISER.get(denoiser) if denoiser is not None else None
            if patcher is None:
                patcher, created = Patcher(components, schedules="unfused", backups=backups or "auto"), True
            _PATCHERS[pipe] = patcher
    if not created and (patcher.components.keys() != components.keys() or any(
        patcher.components[k] is not v for k, v in components.items()
    )):
        with patcher.lock:
            patcher.restore()
            patcher.forget(components)
    if denoiser is not None:
        with _PATCHERS_LOCK:
            _BY_DENOISER[denoiser] = patcher
    if backups is not None:
        patcher.backups = backups
    return patcher


def _library(library: Any) -> Any:
    if isinstance(library, (str, os.PathLike)):
        library = [library]
    if isinstance(library, Sequence) and not isinstance(library, str):
        key = tuple(os.path.abspath(os.fspath(d)) for d in library)
        with _LIBRARIES_LOCK:
            if key in _LIBRARIES:
                _LIBRARIES.move_to_end(key)
            else:
                from loraprompt.library import Library

                _LIBRARIES[key] = Library(list(key))
                while len(_LIBRARIES) > _LIBRARY_LIMIT:
                    _LIBRARIES.popitem(last=False)
            return _LIBRARIES[key]
    return library


def _adapter_for(activation: Any, library: Any, cache: AdapterCache, diagnostics: list[Diagnostic]) -> Adapter | None:
    """The adapter a tag names, or None with a diagnostic when the library has no such LoRA."""
    if isinstance(library, Mapping):
        found = library.get(activation.name)
        if isinstance(found, Adapter) or found is None:
            if found is None:
                diagnostics.append(Diagnostic("E-NAME-NOTFOUND", f"no LoRA named {activation.name!r}",
                                              span=activation.span, severity="error", subject=activation.name))
            return found
        return cache.get(found)
    resolution = library.resolve(activation.name, hash=getattr(activation, "hash", None))
    # the library knows names, not prompts: point its diagnostics at the tag
    diagnostics.extend(d if d.span is not None else replace(d, span=activation.span) for d in resolution.diagnostics)
    return None if resolution.entry is None else cache.get(resolution.entry.path)


def _entries(parsed: Any, library: Any, cache: AdapterCache, on_error: str,
             diagnostics: list[Diagnostic]) -> tuple[list[PlanEntry], bool]:
    entries: list[PlanEntry] = []
    static = True
    for activation in parsed.loras:
        try:
            adapter = _adapter_for(activation, library, cache, diagnostics)
        except AdapterFileError as exc:
            if on_error == "raise":
                raise
            diagnostics.append(Diagnostic("E-ADAPTER-FILE", str(exc), span=activation.span, severity="error",
                                          subject=activation.name))
            continue
        if adapter is not None:
            entries.append(entry_for(activation, adapter))
            static = static and is_static(activation)
    return entries, static


class _StepHook:
    """A UNet forward pre-hook: counts sampling steps by timestep (restarting when it rises: a
    second generation in the same block) and syncs the UNet's strengths for each step (the text
    encoders keep their step-0 strengths: they already ran)."""

    def __init__(self, pipe: Any, patcher: Patcher, entries: list[PlanEntry], steps: int) -> None:
        self.pipe, self.patcher, self.steps = pipe, patcher, steps
        self.entries = [replace(e, te=e.strengths(0, steps)[0], te_at=None, blocks=None) if e.te_at else e
                        for e in entries]
        self.step = -1
        self.last: object = None
        self.reports: list[SyncReport] = []

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        value = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else timestep
        if value != self.last or self.step < 0:
            # timesteps fall during sampling: a higher one is the next generation's first step
            restart = isinstance(value, float) and isinstance(self.last, float) and value > self.last
            self.step = 0 if restart else self.step + 1
            self.last = value
            total = getattr(self.pipe, "_num_timesteps", None) or self.steps
            self.reports.append(self.patcher.sync(self.entries, step=self.step, total_steps=total, on_error="skip"))


def _denoiser(pipe: Any) -> Any:
    """The module each sampling step runs: the UNet, or the transformer of SD3/Flux pipelines."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


@contextmanager
def activate(
    pipe: Any,
    prompt: str,
    library: Any = None,
    *,
    steps: int | None = None,
    profile: str = "loraprompt",
    cache: AdapterCache | None = None,
    on_error: str = "raise",
    restore: bool = True,
    schedules: str = "unfused",
) -> Iterator[ActivePrompt]:
    """Apply the LoRAs tagged in `prompt` to `pipe` for the block; yield the stripped prompt.

    `library` is a folder, a list of folders, a `loraprompt.Library`, or a mapping name -> file
    path or Adapter. `steps` is the number of sampling steps (for fractional start/stop and
    keyframes before sampling starts; default 50). `on_error="skip"` drops a LoRA that cannot
    apply and reports it in `diagnostics` instead of raising; a name the library does not have
    is never raised, as in A1111: it is an `E-NAME-NOTFOUND` diagnostic. `schedules="fused"` rewrites the
    weights of a step-scheduled LoRA at each step instead of running it unfused. The patcher's
    lock is held for the whole block, so concurrent generations on one pipeline never see each
    other's LoRAs.
    """
    from loraprompt.syntax import parse

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    parsed = parse(prompt, profile=profile)  # type: ignore[arg-type]
    diagnostics = list(parsed.diagnostics)
    if parsed.loras and library is None:
        raise ValueError("activate() needs library= (a folder, a Library or a name -> file mapping)")
    entries, static = _entries(parsed, _library(library), cache or DEFAULT_CACHE, on_error, diagnostics)
    patcher = patcher_for(pipe)
    total = steps or DEFAULT_STEPS
    with patcher.lock:
        patcher.schedules = schedules
        report = patcher.sync(entries, step=0, total_steps=total, on_error=on_error)
        entries = [e for e in entries if e.label not in report.skipped]
        diagnostics.extend(report.diagnostics)
        embeddings = apply_embeddings(pipe, [e.adapter for e in entries])  # bundle_emb.* while active
        diagnostics.extend(embeddings.diagnostics)
        step_hook = _StepHook(pipe, patcher, entries, total)
        hook = None if static else _denoiser(pipe).register_forward_pre_hook(step_hook, with_kwargs=True)
        try:
            yield ActivePrompt(embeddings.expand(parsed.text), parsed, entries, report, diagnostics, steps=step_hook.reports)
        finally:
            if hook is not None:
                hook.remove()
            embeddings.restore()
            if restore:
                patcher.restore()
