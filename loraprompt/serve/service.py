"""What both APIs share: the model's description, the LoRA library and sources, the limits, the
sampler names, and the backend that runs jobs (the local model queue, or Ray Serve replicas)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from loraprompt.models.clip_skip import MAX_CLIP_SKIP, clip_skip_limit
from loraprompt.models.samplers import SAMPLERS, Sampler, schedule_variants
from loraprompt.serve.errors import ServeError, invalid
from loraprompt.serve.jobs import ImageTask, Job, ModelQueue
from loraprompt.serve.loras import DEFAULT_MAX_DOWNLOAD_MB, DEFAULT_TIMEOUT_S, LoraSources, PinnedLibrary

MAX_SEED, SEED_SPAN = 2**32 - 1, 2**64  # a random seed's range (A1111's), and every seed torch's generator takes


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`loraprompt serve --max-steps/--max-size/--max-images`), and
    how many jobs may wait for the model (`--max-queue`; more are answered 503)."""

    max_steps: int = 150
    max_size: int = 2048
    max_images: int = 16
    max_queue: int = 64


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model as the APIs describe it."""

    name: str
    family: str
    model_hash: str | None = None
    is_demo: bool = False
    samplers: tuple[Sampler, ...] = SAMPLERS  # what the model can run (flow-matching ones for SD3/Flux)
    max_clip_skip: int = MAX_CLIP_SKIP  # the highest A1111 clip skip its text encoder has layers for

    @property
    def native_size(self) -> int:
        """The default image side: 256 for the demo, 512 for SD1/SD2, 1024 for SDXL, SD3 and Flux."""
        return 256 if self.is_demo else 512 if self.family in ("sd1", "sd2") else 1024

    @classmethod
    def of(cls, model: Any, samplers: tuple[Sampler, ...] = SAMPLERS) -> ModelInfo:
        """`model` (a `LoadedModel`) with the samplers its engine lists (`Txt2Img.samplers`)."""
        return cls(model.name, model.family, model.model_hash, bool(model.is_demo), tuple(samplers),
                   clip_skip_limit(model))


class Backend(Protocol):
    """Runs jobs: `LocalBackend` on this process's model, `ray_app.RayBackend` on replicas."""

    def submit(self, job: Job) -> Job: ...
    def cancel(self, job: Job) -> None: ...
    def interrupt(self) -> None: ...
    @property
    def current(self) -> Job | None: ...
    @property
    def pending(self) -> int: ...


class LocalBackend(ModelQueue):
    """The model of this process, behind its one queue."""

    def submit(self, job: Job) -> Job:
        library = getattr(self.engine, "library", None)
        if isinstance(library, PinnedLibrary):
            for task in job.tasks:
                library.add_pins(task.pins)
        return super().submit(job)


# A1111 >= 1.9 names a sampler and a schedule type apart; "automatic" is the sampler's own default,
# listed first for each name (v1.10.1's samplers_k_diffusion: Karras for DPM++ 2M, Exponential for DPM++ 2M SDE,
# the model's own schedule for Euler, LMS, Heun...; Forge's "Simple" for a flow-matching model). The
# web UI's labels ("DPM++ 2M Karras", "Euler Simple") are A1111's older combined names and are
# accepted too. The schedule types are A1111's scheduler names, lower case ("uniform": the model's own).


def scheduler_name(schedule_type: str | None) -> str:
    """A1111's scheduler name for a sampler's schedule type (None: the model's own, "uniform")."""
    return (schedule_type or "uniform").lower()


def sampler_names(samplers: tuple[Sampler, ...] = SAMPLERS) -> list[str]:
    """The sampler names (without schedule types) of `samplers`, in order."""
    return list(dict.fromkeys(s.name for s in samplers))


def schedulers_of(samplers: tuple[Sampler, ...] = SAMPLERS) -> list[str]:
    """The scheduler names a request may give for `samplers`: "automatic", then their schedule
    types, listed or reached (`schedule_variants`)."""
    every = (*samplers, *schedule_variants(samplers))
    return ["automatic", *dict.fromkeys(scheduler_name(s.schedule_type) for s in every)]


def default_sampler(samplers: tuple[Sampler, ...] = SAMPLERS) -> str:
    """A1111's default sampler ("Euler a") where the model has it, else the model's first one."""
    return "Euler a" if any(s.name == "Euler a" for s in samplers) else samplers[0].name


def sampler_label(name: str | None, scheduler: str | None, field: str = "sampler_name",
                  samplers: tuple[Sampler, ...] = SAMPLERS) -> str:
    """The label among `samplers` (the loaded model's) for A1111's (sampler_name, scheduler); 422
    listing the choices."""
    name = (name or default_sampler(samplers)).strip()
    sched = (scheduler or "automatic").strip().lower()
    names, labels = sampler_names(samplers), [s.label for s in samplers]
    if name in labels and name not in names:
        return name  # an older combined name such as "DPM++ 2M Karras" says its schedule itself
    if name not in names:
        choices = list(dict.fromkeys(names + labels))
        raise invalid(field, f"unknown sampler {name!r} for this model; choose one of: {', '.join(choices)}",
                      choices=choices)
    kinds = schedulers_of(samplers)
    if sched not in kinds:
        raise invalid("scheduler", f"unknown scheduler {scheduler!r} for this model; choose one of: {', '.join(kinds)}",
                      choices=kinds)
    offered = [s for s in (*samplers, *schedule_variants(samplers)) if s.name == name]  # any pair it can run, as A1111
    found = offered[0] if sched == "automatic" else next(
        (s for s in offered if scheduler_name(s.schedule_type) == sched), None)
    if found is None:
        mine = [scheduler_name(s.schedule_type) for s in offered]
        raise invalid("scheduler", f"{name!r} has no {scheduler!r} schedule here; choose one of: automatic, "
                      + ", ".join(mine), choices=["automatic", *mine])
    return found.label


class Service:
    """The state the routes share. `engine` is a `Txt2Img`; without one (the Ray ingress),
    `model` and `library` describe what the replicas load and `backend` reaches them."""

    def __init__(
        self,
        engine: Any = None,
        *,
        model: ModelInfo | None = None,
        library: Any = None,
        backend: Backend | None = None,
        download_dir: str | Path | None = None,
        limits: Limits | None = None,
        max_download_mb: float = DEFAULT_MAX_DOWNLOAD_MB,
        download_timeout_s: float = DEFAULT_TIMEOUT_S,
        keep_predictions: int = 256,
    ) -> None:
        base_library = engine.library if engine is not None else library
        if isinstance(base_library, PinnedLibrary):
            pinned = base_library
        else:
            if download_dir is None:
                from loraprompt.models import default_data_dir

                download_dir = default_data_dir() / "downloads"
            pinned = PinnedLibrary(base_library, download_dir)
        if engine is not None:
            engine.library = pinned  # the engine resolves pinned names from now on
        self.engine = engine
        self.library = pinned
        self._model = model
        self.sources = LoraSources(pinned, max_download_bytes=int(max_download_mb * (1 << 20)),
                                   timeout_s=download_timeout_s)
        self.limits = limits or Limits()
        self.backend: Backend = backend if backend is not None else LocalBackend(engine)
        self.keep_predictions = keep_predictions
        self.predictions: dict[str, Any] = {}
        # what POST /sdapi/v1/options set; "save_incomplete_images" starts as --save-incomplete-images
        self.options: dict[str, Any] = {"CLIP_stop_at_last_layers": 1,
                                        "save_incomplete_images": bool(getattr(engine, "save_incomplete", False))}
        self.cmd_flags: dict[str, Any] = {}  # A1111's command-line flags that `loraprompt serve` was given

    @property
    def model(self) -> ModelInfo:
        """What is loaded now: the web UI's checkpoint dropdown can swap the engine's model."""
        if self._model is not None:
            return self._model
        return ModelInfo.of(self.engine.model, self.engine.samplers)

    def check(self, *, steps: int, width: int, height: int, images: int, fields: dict[str, str] | None = None) -> None:
        """422 naming the field when a request asks for more than the limits allow."""
        names = {"steps": "steps", "width": "width", "height": "height", "images": "batch_size", **(fields or {})}
        locs = {k: tuple(v.split(".")) for k, v in names.items()}
        lim = self.limits
        if not 1 <= steps <= lim.max_steps:
            raise invalid(locs["steps"], f"must be between 1 and {lim.max_steps} (--max-steps), got {steps}")
        for key, value in (("width", width), ("height", height)):
            if not 64 <= value <= lim.max_size:
                raise invalid(locs[key], f"must be between 64 and {lim.max_size} (--max-size), got {value}")
            if value % 8:
                raise invalid(locs[key], f"must be a multiple of 8, got {value}")
        if not 1 <= images <= lim.max_images:
            raise invalid(locs["images"], f"asks for {images} images; between 1 and {lim.max_images} (--max-images)")

    @staticmethod
    def seeds(seed: int | None, count: int) -> list[int]:
        """A1111's seeds for a batch: `seed + i` (a random start below 2**32 for None or -1); A1111
        does not wrap them (processing.py:904), so only past torch's 64 bits do they wrap."""
        start = random.randint(0, MAX_SEED) if seed is None or seed < 0 else int(seed)
        return [(start + i) % SEED_SPAN for i in range(count)]

    def run(self, tasks: list[ImageTask], *, keep: bool = False, keep_incomplete: bool | None = None,
            job_id: str | None = None) -> Job:
        """Queue the tasks as one job (`keep`, `keep_incomplete`: see `Job`)."""
        if not tasks:
            raise ServeError(422, (), "nothing to generate")
        if self.backend.pending >= self.limits.max_queue:
            raise ServeError(503, (), f"{self.backend.pending} jobs are waiting (--max-queue {self.limits.max_queue});"
                             " try again later")
        return self.backend.submit(Job(tasks, keep=keep, keep_incomplete=keep_incomplete, job_id=job_id))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
