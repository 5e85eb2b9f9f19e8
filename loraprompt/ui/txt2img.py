"""txt2img without gradio: parse the prompt, resolve its LoRAs in the library, sync the patcher to
exactly that set (an empty set restores the model), run the diffusers pipeline, and save a PNG
with A1111-style infotext. The web UI is a thin shell around `Txt2Img.generate`."""

from __future__ import annotations

import datetime
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loraprompt
from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import LoraPromptError
from loraprompt.infotext import GenerationInfo, format_infotext
from loraprompt.models import LoadedModel
from loraprompt.models.samplers import SAMPLER_LABELS, make_scheduler, sampler_by_label
from loraprompt.syntax import split_and
from loraprompt.ui.txt2img_prompt import Conditioning

StepCallback = Callable[[int, int], None]
MAX_SEED = 2**32 - 1


@dataclass
class Txt2ImgRequest:
    """One txt2img request as the UI collects it; seed -1 means a random seed."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    sampler: str = SAMPLER_LABELS[0]
    clip_skip: int = 1  # A1111's "Clip skip" (SD1/SD2; SDXL always uses its penultimate layer)


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA that was patched in for a generation: the name as written, its file and strengths."""

    name: str
    path: str
    te: float | None  # None: follows a step schedule
    unet: float | None
    short_hash: str | None


@dataclass
class Txt2ImgResult:
    """What one generation produced and what the user should be told about it."""

    image: Any
    path: Path
    infotext: str
    seed: int
    applied: list[AppliedLora] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


class Txt2Img:
    """txt2img with one model and one LoRA library (LoRAs stay patched until a prompt drops them)."""

    def __init__(self, model: LoadedModel, library: Any, outputs_dir: str | Path) -> None:
        self.model = model
        self.library = library
        self.outputs_dir = Path(outputs_dir)
        self._base_scheduler_config = model.pipe.scheduler.config
        self._lock = threading.Lock()
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        """Stop the running generation after its current step (the image so far is kept)."""
        self._interrupted.set()

    def _short_hash(self, path: str) -> str | None:
        """A1111's `Lora hashes` value: the first 12 hex digits of the tensor-data sha256."""
        from loraprompt.library.hashes import file_hashes

        entry = self.library.get(path)
        try:
            hashes = self.library.hashes(entry) if entry is not None else file_hashes(path)
        except LoraPromptError:
            return None
        return hashes.get("a1111_short")

    def _applied(self, entries: list[Any]) -> list[AppliedLora]:
        """What the patcher applied, by the names written in the prompt."""
        return [
            AppliedLora(e.name or e.label, e.adapter.path, None if e.te_at else e.te, None if e.unet_at else e.unet,
                        self._short_hash(e.adapter.path))
            for e in entries
        ]

    def generate(self, request: Txt2ImgRequest, on_step: StepCallback | None = None) -> Txt2ImgResult:
        """Run one txt2img generation and save it; the patcher is synced before every run."""
        import torch

        from loraprompt.integrations.diffusers import activate

        sampler = sampler_by_label(request.sampler)
        seed = random.randint(0, MAX_SEED) if request.seed < 0 else int(request.seed)
        steps = int(request.steps)
        clip_skip = 1 if self.model.family == "sdxl" else max(1, int(request.clip_skip))
        pipe = self.model.pipe

        conditioning: Conditioning | None = None
        done = [0]

        def step_end(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            done[0] = step + 1
            if on_step is not None:
                on_step(step + 1, steps)
            if self._interrupted.is_set():
                _pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
            if conditioning is not None:
                kwargs.update(conditioning.step_update(step, _pipe.do_classifier_free_guidance))
            return kwargs

        with self._lock:
            self._interrupted.clear()
            pipe.scheduler = make_scheduler(sampler, self._base_scheduler_config)
            with activate(pipe, request.prompt, self.library, steps=steps, on_error="skip", restore=False) as active, \
                    torch.inference_mode():
                conditioning = Conditioning(pipe, str(active), request.negative_prompt, steps, clip_skip)
                image = pipe(
                    **conditioning.kwargs,
                    num_inference_steps=steps,
                    guidance_scale=float(request.cfg_scale),
                    width=int(request.width),
                    height=int(request.height),
                    generator=torch.Generator("cpu").manual_seed(seed),
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=conditioning.tensor_names,
                ).images[0]
            applied = self._applied(active.entries)
            diagnostics = list(active.diagnostics)
        self.library.note_use(a.path for a in applied)  # for the gallery's "most used" / "last used" sorts
        if done[0] < steps and self._interrupted.is_set():
            diagnostics.append(Diagnostic("I-INTERRUPTED", f"interrupted after step {done[0]} of {steps}",
                                          severity="info", data={"step": done[0]}))
        if len(split_and(str(active))) > 1:
            diagnostics.append(Diagnostic("W-AND-UNSUPPORTED", "AND (composable diffusion) is not supported by the"
                                          " standalone UI: the parts were encoded as one prompt", subject="AND"))
        info = GenerationInfo(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            steps=steps,
            sampler=sampler.name,
            schedule_type=sampler.schedule_type,
            cfg_scale=float(request.cfg_scale),
            seed=seed,
            width=image.width,
            height=image.height,
            model=self.model.name,
            model_hash=self.model.model_hash,
            lora_hashes={a.name: a.short_hash for a in applied if a.short_hash},
            extra={"Clip skip": clip_skip if clip_skip > 1 else None, "Version": f"loraprompt {loraprompt.__version__}"},
        )
        infotext = format_infotext(info)
        path = save_png(image, infotext, self.outputs_dir, seed)
        return Txt2ImgResult(image, path, infotext, seed, applied, diagnostics)


def save_png(image: Any, infotext: str, outputs_dir: Path, seed: int) -> Path:
    """Save as A1111 does: `<outputs>/txt2img-images/<date>/<NNNNN>-<seed>.png` with `parameters`."""
    from PIL.PngImagePlugin import PngInfo

    folder = outputs_dir / "txt2img-images" / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in folder.glob("*.png") if p.name[:5].isdigit()]
    number = max(numbers, default=-1) + 1
    meta = PngInfo()
    meta.add_text("parameters", infotext)
    while True:
        path = folder / f"{number:05d}-{seed}.png"
        try:
            with open(path, "xb") as f:
                image.save(f, format="PNG", pnginfo=meta)
            return path
        except FileExistsError:
            number += 1
