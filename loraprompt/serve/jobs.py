"""Jobs and the one queue per loaded model.

A job is a list of `ImageTask`s (one per image, each with its own prompt and seed). The model's
worker thread runs jobs one at a time, and inside a job runs the images grouped by LoRA set (so
the patcher switches sets as rarely as possible) while keeping the outputs in request order.
Each image is one `Txt2Img.generate` call: an image of a batch is, by construction, the image that
generating it alone gives. After a failed, cancelled or interrupted job the model is restored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraprompt.diagnostics import Diagnostic

if TYPE_CHECKING:
    from loraprompt.ui.txt2img import Txt2ImgRequest

log = logging.getLogger("loraprompt.serve")


@dataclass(frozen=True)
class ImageTask:
    """One image to generate: its request (batch of one, a fixed seed) and the LoRAs its prompt
    names by a pinned name, as (name, file)."""

    request: Txt2ImgRequest
    pins: tuple[tuple[str, str], ...] = ()


@dataclass
class ImageOutput:
    """One generated image: PNG bytes (A1111 `parameters` chunk included) and what was applied."""

    png: bytes
    infotext: str
    seed: int
    loras: list[dict[str, Any]] = field(default_factory=list)  # name, path, te, unet, short_hash
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # code, severity, message, subject
    interrupted: bool = False
    path: str | None = None  # where it was saved, when kept
    replica: str | None = None  # the Ray Serve replica that made it (None in a single process)


def lora_set_key(prompt: str) -> str:
    """The LoRA set a prompt asks for, as canonical tags in application order ("" for none).
    Two prompts with the same key patch the model identically."""
    from loraprompt.syntax import format_activation, parse

    return " ".join(format_activation(a) for a in parse(prompt).loras)


def grouped_order(tasks: Sequence[ImageTask]) -> list[int]:
    """Indices of `tasks` grouped by LoRA set (groups in order of first appearance, request order
    inside a group): the fewest patcher switches without reordering the outputs."""
    groups: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault(lora_set_key(task.request.prompt), []).append(i)
    return [i for members in groups.values() for i in members]


class Job:
    """Images being made for one request; its status moves queued -> running -> one of
    succeeded, failed, canceled. `interrupt()` (A1111) stops it keeping the images made so far;
    `cancel()` (Replicate) stops it and it ends canceled."""

    def __init__(self, tasks: Sequence[ImageTask], *, keep: bool = False, keep_incomplete: bool | None = None,
                 job_id: str | None = None) -> None:
        self.id = job_id or uuid.uuid4().hex
        self.tasks = list(tasks)
        self.keep = keep  # save the images (A1111's save_images)
        self.keep_incomplete = keep_incomplete  # those an interrupt cut short too; None: the engine's setting
        self.status = "queued"
        self.outputs: list[ImageOutput | None] = [None] * len(self.tasks)
        self.error: str | None = None
        self.logs: list[str] = []
        self.warnings: list[str] = []  # the lines of `logs` a client should see as warnings
        self.created_at = time.time()
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.image_no = 0  # images finished
        self.step = 0  # sampling step of the current image
        self.steps = 0  # of how many (its hires pass included; 0 until its first step)
        self.interrupted = False
        self._cancel = threading.Event()
        self._canceled = False
        self._done = threading.Event()
        self._on_done: list[Callable[[Job], None]] = []
        self._state_lock = threading.Lock()
        self._finished = False

    # ---- control ------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the job; it ends `canceled` (a queued job never starts)."""
        self._canceled = True
        self._cancel.set()

    def interrupt(self) -> None:
        """Stop after the current sampling step; the images made so far are the result."""
        self.interrupted = True
        self._cancel.set()

    @property
    def stop_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._canceled

    # ---- state --------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.logs.append(message)
        log.info("job %s: %s", self.id[:8], message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(message)

    def start(self) -> None:
        self.status = "running"
        self.started_at = time.time()

    def finish(self, status: str, error: str | None = None) -> None:
        """End the job; `on_done` callbacks run before `wait()` returns."""
        if error:
            self.log(f"error: {error}")
        with self._state_lock:
            self.status = status
            self.error = error
            self.completed_at = time.time()
            self._finished = True
            callbacks = list(self._on_done)
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a listener must not stop the worker
                log.exception("job %s: done callback failed", self.id[:8])
        self._done.set()

    def on_done(self, callback: Callable[[Job], None]) -> None:
        """Call `callback(job)` when the job ends (at once if it already has)."""
        with self._state_lock:
            if not self._finished:
                self._on_done.append(callback)
                return
        callback(self)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (True) or `timeout` seconds pass (False)."""
        return self._done.wait(timeout)

    @property
    def images(self) -> list[ImageOutput]:
        """The images made, in request order (an interrupted job has fewer)."""
        return [o for o in self.outputs if o is not None]


def output_of(result: Any) -> ImageOutput:
    """An `ImageOutput` from a `Txt2ImgResult`: the saved PNG's bytes when it was saved (kept), else
    the in-memory image encoded as saving it would have."""
    from loraprompt.ui.outputs import png_bytes

    path = None if result.path is None else Path(result.path)
    png = path.read_bytes() if path is not None else png_bytes(result.image, result.infotext)
    loras = [{"name": a.name, "path": a.path, "te": a.te, "unet": a.unet, "short_hash": a.short_hash}
             for a in result.applied]
    return ImageOutput(png, result.infotext, result.seed, loras, [diagnostic_json(d) for d in result.diagnostics],
                       interrupted=any(d.code == "I-INTERRUPTED" for d in result.diagnostics),
                       path=None if path is None else str(path))


def diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {"code": d.code, "severity": d.severity, "message": d.message, "subject": d.subject}


def restore_model(engine: Any) -> None:
    """Copy the model's original weights back (no LoRA applied), once no generation runs."""
    engine.restore_loras()


def run_job(engine: Any, job: Job, on_image: Callable[[int, ImageOutput], None] | None = None) -> None:
    """Run `job` on `engine` (a `Txt2Img`) in this thread, images grouped by LoRA set."""
    if job.cancel_requested:
        job.finish("canceled")
        return
    job.start()
    clean = False
    try:
        for index in grouped_order(job.tasks):
            if job.stop_requested:
                break
            task = job.tasks[index]
            job.step = 0

            def on_step(step: int, total: int) -> None:
                job.step, job.steps = step, total
                if job.stop_requested:
                    engine.interrupt()

            result = engine.generate(task.request, on_step=on_step, save=job.keep, save_incomplete=job.keep_incomplete)
            output = output_of(result)
            for d in output.diagnostics:
                if d["severity"] in ("error", "warning"):
                    job.warn(f"image {index}: {d['severity']} {d['code']}: {d['message']}")
            if job.cancel_requested:
                break
            job.outputs[index] = output
            job.image_no += 1
            if on_image is not None:
                on_image(index, output)
        clean = not job.stop_requested
    except Exception as exc:  # the job fails; the server goes on
        log.exception("job %s failed", job.id[:8])
        restore_model(engine)
        job.finish("failed", f"{type(exc).__name__}: {exc}")
        return
    if not clean:
        restore_model(engine)  # a stopped job leaves no LoRA behind
        job.log("canceled" if job.cancel_requested else f"interrupted after {job.image_no} of {len(job.tasks)} images")
    job.finish("canceled" if job.cancel_requested else "succeeded")


class ModelQueue:
    """The one queue of a loaded model: a worker thread runs its jobs one at a time."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.current: Job | None = None
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[Job] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="loraprompt-model-queue", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._waiting.append(job)
        self._queue.put(job)
        return job

    @property
    def pending(self) -> int:
        """Jobs waiting (not counting the running one)."""
        with self._lock:
            return len(self._waiting)

    def interrupt(self) -> None:
        """A1111's interrupt: stop the running job, keeping what it made, or a generation the web UI
        runs on the same engine outside this queue (A1111's interrupt stops whatever runs). With
        nothing running it does nothing: a generation clears the engine's flag when it starts."""
        job = self.current
        if job is not None:
            job.interrupt()
        self.engine.interrupt()

    def skip(self) -> None:
        """A1111's skip: the current image of the running job ends now, unfinished, and the job
        goes on with its next image (each image is its own generation here); with no job running,
        the batch a generation of the web UI samples on the same engine (A1111's skip is global)."""
        job = self.current
        if job is not None:
            job.log(f"skip: image {job.image_no + 1} of {len(job.tasks)} ends unfinished")
            self.engine.interrupt()
        else:
            skip = getattr(self.engine, "skip", None)  # an engine of the web UI's kind
            if skip is not None:
                skip()

    def cancel(self, job: Job) -> None:
        """Cancel `job`: one still waiting leaves the queue and ends `canceled` now (the worker
        skips it); the running one stops after its current sampling step."""
        with self._lock:
            waiting = job in self._waiting
            if waiting:
                self._waiting.remove(job)
        job.cancel()
        if waiting:
            job.finish("canceled")
        elif self.current is job:
            self.engine.interrupt()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the running job (queued jobs end canceled)."""
        with self._lock:
            waiting = list(self._waiting)
        for job in waiting:
            self.cancel(job)
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job not in self._waiting:  # cancelled while it waited: already finished
                    continue
                self._waiting.remove(job)
                self.current = job
            try:
                run_job(self.engine, job)
            finally:
                self.current = None
