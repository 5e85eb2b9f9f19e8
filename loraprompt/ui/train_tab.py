"""The web UI's Train tab: drop images (or a .zip, or name a folder), set the main knobs, and train a
LoRA in a worker process, so generation in the other tab never waits on it. The page polls the
job: a live loss plot, samples as they come, and the finished LoRA lands in the first LoRA folder,
where the gallery shows it on its next refresh."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprompt.train.config import TASKS

NAME = re.compile(r"^[\w][\w .()+-]{0,99}$")


def _worker(config: dict[str, Any], events: Any) -> None:
    """The training process: run `train` and send every event back (then "error" or "done")."""
    import torch

    from loraprompt.train import TrainConfig, TrainError, train

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    parent = os.getppid()

    def orphaned() -> None:  # the web UI was killed: do not train on for nobody
        while True:
            time.sleep(2.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        train(TrainConfig.from_dict(config), on_event=lambda kind, data: events.put((kind, data)))
    except TrainError as exc:
        events.put(("error", {"message": str(exc)}))
    except KeyboardInterrupt:  # Stop while the model or the images load
        events.put(("error", {"message": "interrupted before training started; nothing to resume"}))
    except BaseException as exc:  # the page must hear about any failure
        events.put(("error", {"message": f"{type(exc).__name__}: {exc}"}))


@dataclass
class TrainJob:
    """One run in a worker process; `poll()` folds its events into the fields the page shows."""

    name: str
    config: dict[str, Any]
    status: str = "starting"  # starting, training, done, error, stopped
    message: str = ""
    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    upscaled: list[str] = field(default_factory=list)  # images that train blurry
    output: str | None = None
    started: float = field(default_factory=time.time)
    rate: float = 0.0
    eta: float = 0.0
    stopping: bool = False  # Stop was pressed
    resumed_at: int | None = None  # the step a resumed run went on from

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self.process = ctx.Process(target=_worker, args=(self.config, self.events), daemon=True)
        self.process.start()

    @property
    def running(self) -> bool:
        return self.status in ("starting", "training")

    def poll(self) -> None:
        import queue

        while True:
            try:
                kind, data = self.events.get_nowait()
            except queue.Empty:
                break
            self._event(kind, data)
        if self.running and not self.process.is_alive():
            self.process.join(timeout=1)
            if self.running and self.stopping:  # Stop while the worker still started up (importing torch)
                self.status, self.message = "stopped", "stopped before training started; nothing to resume"
            elif self.running:  # died without a word (killed, out of memory at the OS level)
                self.status, self.message = "error", f"the training process exited (code {self.process.exitcode})"

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            self.status, self.steps = "training", int(data["steps"])
            self.resumed_at = int(data.get("step") or 0) or None
        elif kind == "step":
            self.losses.append((int(data["step"]), float(data["loss"])))
            self.rate, self.eta = float(data["steps_per_s"]), float(data["eta_s"])
        elif kind == "sample":
            self.samples.append(str(data["path"]))
        elif kind == "skipped":
            self.skipped.append(f"{data['file']}: {data['reason']}")
        elif kind == "warning":
            self.upscaled.append(f"{data['file']}: {data['reason']}")
        elif kind == "done":
            self.status, self.output = "done", str(data["output"])
            self.message = str(data.get("preview_error") or "")
        elif kind == "error":
            stopped = "interrupted" in str(data["message"])
            self.status, self.message = ("stopped" if stopped else "error"), str(data["message"])

    def stop(self) -> None:
        """Ctrl-C for the worker: it saves a resumable state and reports "interrupted"."""
        if self.running and self.process.is_alive() and self.process.pid is not None:
            self.stopping = True
            os.kill(self.process.pid, signal.SIGINT)

    def summary(self) -> str:
        lines = [f"**{self.name}**: {self.status}" + (f" (resumed at step {self.resumed_at})" if self.resumed_at else "")]
        if self.losses:
            step, loss = self.losses[-1]
            lines.append(f"step {step}/{self.steps} · loss {loss:.4f} · {self.rate:.2f} steps/s · "
                         f"ETA {int(self.eta) // 60}:{int(self.eta) % 60:02d}")
        if self.output:
            lines.append(f"saved `{self.output}`: it is in the LoRA gallery as `<lora:{self.name}:1>`"
                         f" (activation text `{self.config['token']}`)")
        if self.message:  # the trainer's hint names the CLI's --resume: here it is a button
            lines.append(self.message.replace("resume with --resume", "press Resume (same name) to go on; state in"))
        if self.skipped:
            lines.append("skipped: " + "; ".join(self.skipped[:5]))
        if self.upscaled:
            lines.append("warning: " + "; ".join(self.upscaled[:5]))
        return "\n\n".join(lines)


class TrainJobs:
    """The tab's state: at most one job at a time (training takes the machine)."""

    def __init__(self, lora_dir: Path, work_dir: Path, checkpoint: str, library: Any = None, *,
                 local_paths: bool = True) -> None:
        """`local_paths=False` (a web UI served beyond loopback): a visitor may not name a folder or
        .zip on the server's disk, which would let anyone who reaches the page train on (and see
        samples of) any images the server can read; dropped files still work."""
        self.lora_dir, self.work_dir, self.checkpoint, self.library = lora_dir, work_dir, checkpoint, library
        self.local_paths = local_paths
        self.job: TrainJob | None = None
        self._lock = threading.Lock()

    def start(self, name: str, files: list[str] | None, folder: str, knobs: dict[str, Any]) -> TrainJob:
        from loraprompt.train import TrainConfig, TrainError

        name = (name or "").strip()
        if not NAME.match(name):
            raise TrainError("give the LoRA a name: letters, digits, spaces, . ( ) + - (up to 100)")
        with self._lock:
            self._check_idle()
            output = self.lora_dir / f"{name}.safetensors"
            if output.exists() and not knobs.get("force"):
                raise TrainError(f"{output.name} exists in the LoRA folder; pick another name or tick Replace")
            self._check_name_free(name, output)
            job_dir = self.work_dir / name
            images = self._images(job_dir, files or [], folder)
            config = TrainConfig(images=str(images), output=str(output), checkpoint=self.checkpoint,
                                 state_dir=str(job_dir / "state"), **knobs)
            return self._launch(name, config.to_dict())

    def resume(self, name: str) -> TrainJob:
        """Go on with the stopped (or failed) run of `name` from its saved state, with that run's
        own settings and images, as `loraprompt train --resume` does."""
        from loraprompt.train import TrainConfig, TrainError
        from loraprompt.train.state import STATE_FILE, read_state

        name = (name or "").strip()
        state = self.work_dir / name / "state"
        if not NAME.match(name) or not (state / STATE_FILE).is_file():
            raise TrainError(f"no stopped run named {name!r} to resume (Stop saves one once a step has run)")
        with self._lock:
            self._check_idle()
            saved = read_state(state)["config"]
            return self._launch(name, TrainConfig.from_dict({**saved, "resume": str(state)}).to_dict())

    def _check_name_free(self, name: str, output: Path) -> None:
        """TrainError when `<lora:name>` would apply another file (one in a subfolder, or an alias)."""
        from loraprompt.train import TrainError

        found = self.library.resolve(name).entry if self.library is not None else None
        if found is not None and Path(found.path).resolve() != output.resolve():
            raise TrainError(f"{found.relpath} is already named {name}: <lora:{name}> would apply it, not the "
                             "new LoRA; pick another name")

    def _check_idle(self) -> None:
        from loraprompt.train import TrainError

        if self.job is not None and self.job.running:
            raise TrainError(f"{self.job.name} is still training; stop it first")

    def _launch(self, name: str, config: dict[str, Any]) -> TrainJob:
        self.job = TrainJob(name, config)
        self.job.start()
        return self.job

    def _images(self, job_dir: Path, files: list[str], folder: str) -> Path:
        from loraprompt.train import TrainError

        if files:
            target = job_dir / "images"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            zips = [f for f in files if f.lower().endswith(".zip")]
            if zips and len(files) == 1:
                return Path(zips[0])
            if zips:  # it would be copied beside the images and never opened
                raise TrainError(f"{Path(zips[0]).name}: drop a .zip on its own, or the images without it")
            for f in files:
                if (target / Path(f).name).exists():  # two files of one name from two folders: one would be lost
                    raise TrainError(f"{Path(f).name}: two dropped files have this name; rename one (a caption"
                                     " .txt pairs with the image of its name)")
                shutil.copy(f, target / Path(f).name)
            return target
        if folder.strip() and not self.local_paths:
            raise TrainError("this web UI is served beyond loopback, so it does not read folders on its machine: "
                             "drop the images (or a .zip) instead")
        if folder.strip():
            path = Path(folder.strip()).expanduser()
            if not (path.is_dir() or path.suffix.lower() == ".zip"):
                raise TrainError(f"{path}: not a folder or a .zip")
            return path
        raise TrainError("drop some images (or a .zip), or name a folder of images")

    def poll(self) -> TrainJob | None:
        job = self.job
        if job is not None:
            before = job.status
            job.poll()
            if before != "done" and job.status == "done" and self.library is not None:
                self.library.refresh()  # the gallery's next poll shows the new card
        return job


def form_knobs(values: tuple[Any, ...]) -> dict[str, Any]:
    """The form's (task, token, pivotal, steps, rank, lr, resolution, train_te, sample_every, force)
    as TrainConfig fields: an emptied number takes the default; a 0 is passed on (TrainConfig
    refuses a bad one by name rather than training with another value)."""
    task, token, pivotal, steps, rank, lr, resolution, train_te, sample_every, force = values

    def number(value: Any, default: Any, kind: Any = int) -> Any:
        return default if value is None or value == "" else kind(value)

    return {"task": task, "token": (token or "").strip() or "<s1>", "pivotal": bool(pivotal),
            "steps": number(steps, 500), "rank": number(rank, 16), "lr": number(lr, 1e-4, float),
            "resolution": number(resolution, 0) or None, "train_te": bool(train_te),
            "sample_every": number(sample_every, 0), "force": bool(force)}


def _plot_value(job: TrainJob | None) -> Any:
    import pandas as pd

    rows = job.losses if job else []
    return pd.DataFrame({"step": [s for s, _ in rows], "loss": [v for _, v in rows]})


def build_train_tab(trainer: TrainJobs) -> Any:
    """The Train tab's components and handlers (inside an open `gr.Blocks`/`gr.Tabs`)."""
    import gradio as gr

    from loraprompt.train import TrainError
    from loraprompt.ui.forms import user_error

    with gr.Tab("Train", elem_id="lp-train-tab") as tab:
        with gr.Row():
            with gr.Column(scale=3):
                files = gr.File(label="Training images (or one .zip); captions as <image>.txt",
                                file_count="multiple", type="filepath", elem_id="lp-train-files")
                folder = gr.Textbox(label="…or a folder of images on this machine", elem_id="lp-train-folder",
                                    visible=trainer.local_paths)
                name = gr.Textbox(label="LoRA name", value="my_lora", elem_id="lp-train-name")
                with gr.Row():
                    task = gr.Dropdown(list(TASKS), value="object", label="Task", elem_id="lp-train-task")
                    token = gr.Textbox(label="Trigger token", value="<s1>", elem_id="lp-train-token")
                    pivotal = gr.Checkbox(label="Pivotal tuning (learn the token)", value=False,
                                          elem_id="lp-train-pivotal")
                with gr.Row():
                    steps = gr.Number(label="Steps", value=500, precision=0, elem_id="lp-train-steps")
                    rank = gr.Number(label="Rank", value=16, precision=0, elem_id="lp-train-rank")
                    lr = gr.Number(label="Learning rate", value=1e-4, elem_id="lp-train-lr")
                    resolution = gr.Number(label="Resolution (0: the model's)", value=0, precision=0,
                                           elem_id="lp-train-resolution")
                with gr.Row():
                    train_te = gr.Checkbox(label="Train the text encoder", value=True, elem_id="lp-train-te")
                    sample_every = gr.Number(label="Sample every N steps (0: off)", value=100, precision=0,
                                             elem_id="lp-train-sample-every")
                    force = gr.Checkbox(label="Replace an existing LoRA of that name", value=False,
                                        elem_id="lp-train-force")
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="lp-train-start")
                    stop = gr.Button("Stop (saves a resumable state)", elem_id="lp-train-stop")
                    resume = gr.Button("Resume the stopped run of this name", elem_id="lp-train-resume")
            with gr.Column(scale=2):
                status = gr.Markdown("No training yet.", elem_id="lp-train-status")
                plot = gr.LinePlot(_plot_value(None), x="step", y="loss", title="Training loss",
                                   elem_id="lp-train-loss")
                samples = gr.Gallery(label="Samples", columns=3, elem_id="lp-train-samples")

        def begin(fs: Any, fo: Any, nm: str, *values: Any) -> str:
            try:
                job = trainer.start(nm, list(fs or []), fo or "", form_knobs(values))
            except TrainError as exc:
                raise user_error(str(exc)) from exc
            return job.summary()

        def go_on(nm: str) -> str:
            try:
                return trainer.resume(nm).summary()
            except TrainError as exc:
                raise user_error(str(exc)) from exc

        def refresh() -> tuple[str, Any, list[str]]:
            job = trainer.poll()
            if job is None:
                return "No training yet.", _plot_value(None), []
            return job.summary(), _plot_value(job), list(job.samples)

        start.click(begin, [files, folder, name, task, token, pivotal, steps, rank, lr, resolution, train_te,
                            sample_every, force], [status])
        stop.click(lambda: trainer.job.stop() if trainer.job else None, None, None, queue=False)
        resume.click(go_on, [name], [status])
        timer = gr.Timer(1.0)
        timer.tick(refresh, None, [status, plot, samples], queue=False)
    return tab


def add_train_tab(engine: Any, data_dir: Path | None, *, local_paths: bool = True) -> Any:
    """The Train tab for the web UI's engine: LoRAs go to its first LoRA folder, work files under
    `data_dir/train`, the base is the loaded model's file (or the demo). None without a LoRA folder.
    `local_paths`: whether a folder on the server may be named (only when served on loopback)."""
    import tempfile

    roots = list(getattr(engine.library, "roots", []) or [])
    model = engine.model
    checkpoint = "demo" if model.is_demo else (getattr(model, "source", None) or "")
    if not roots or not checkpoint:
        return None
    work = (data_dir or Path(tempfile.gettempdir()) / "loraprompt") / "train"
    return build_train_tab(TrainJobs(Path(roots[0]), work, checkpoint, engine.library, local_paths=local_paths))
