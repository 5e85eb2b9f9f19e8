"""txt2img without gradio: parse the prompt, resolve its LoRAs in the library, sync the patcher to
exactly that set (an empty set restores the model), run the diffusers pipeline, and save a PNG
with A1111-style infotext. The web UI is a thin shell around `Txt2Img.generate`."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import LoraPromptError
from loraprompt.infotext import GenerationInfo, format_infotext
from loraprompt.models import LoadedModel
from loraprompt.models.samplers import Sampler, make_scheduler, model_shift, sampler_by_label, samplers_for
from loraprompt.ui.composable import ComposableHook, composable
from loraprompt.ui.dit_prompt import DIT_FAMILIES, DitConditioning, check_dit_request, dit_infotext
from loraprompt.ui.hires import (
    LATENT_UPSCALERS,
    crop_latents,
    hires_lora_prompt,
    hires_size,
    upscale_images,
)
from loraprompt.ui.img2img import (
    LATENT_RESIZE,
    decode,
    encode,
    img2img_pipeline,
    img2img_schedule,
    img2img_steps,
    open_image,
    resize_image,
    resize_latents,
)
from loraprompt.ui.outputs import infotext_extra, save_png
from loraprompt.ui.progress import Progress, StepCallback
from loraprompt.ui.request_check import MAX_BATCH_COUNT, MAX_BATCH_SIZE, check_request  # noqa: F401 (re-export)
from loraprompt.ui.txt2img_prompt import Conditioning, negative_prompt_notes
from loraprompt.ui.txt2img_types import AppliedLora, GeneratedImage, Txt2ImgRequest, Txt2ImgResult

MAX_SEED, SEED_SPAN = 2**32 - 1, 2**64  # a random seed's range (A1111's), and every seed torch's generator takes


class Txt2Img:
    """txt2img/img2img with one model and one LoRA library (LoRAs stay patched until a prompt drops
    them); `switch_model` replaces the model."""

    def __init__(self, model: LoadedModel, library: Any, outputs_dir: str | Path, *,
                 save_incomplete: bool = False) -> None:
        self.model = model
        self.save_incomplete = save_incomplete  # A1111's "Save incomplete images": interrupted, skipped
        self.library = library
        self.outputs_dir = Path(outputs_dir)
        self._base_scheduler_config = model.pipe.scheduler.config
        self._lock = threading.Lock()
        self._interrupted = threading.Event()
        self._skipped = threading.Event()

    @property
    def samplers(self) -> tuple[Sampler, ...]:
        """The samplers that fit the loaded model (flow-matching ones for SD3 and Flux)."""
        return samplers_for(self._base_scheduler_config)

    def restore_loras(self) -> None:
        """Take every LoRA off the model once no generation (the web page's, an API job's) runs."""
        from loraprompt.integrations.diffusers import patcher_for

        with self._lock:
            patcher_for(self.model.pipe).restore()

    def interrupt(self) -> None:
        """Stop the running generation after its current step (the image so far is kept)."""
        self._interrupted.set()

    def skip(self) -> None:
        """A1111's Skip: the batch being sampled ends after its current step (kept as it is, with
        no hires pass) and the generation goes on with the next one of its batch count."""
        self._skipped.set()

    def _cut(self) -> str | None:
        """What stops the running batch: "interrupt" (it wins over a Skip), "skip", or None."""
        return "interrupt" if self._interrupted.is_set() else "skip" if self._skipped.is_set() else None

    def switch_model(self, load: Callable[[], LoadedModel], reload_previous: Callable[[], LoadedModel]) -> LoadedModel:
        """Replace the model by `load()`. The old pipeline is restored, its patcher forgets it and
        it is released before the new one loads (one model in memory, as A1111 keeps by default);
        when loading fails, `reload_previous()` brings the old one back and the error is raised."""
        import gc

        from loraprompt.integrations.diffusers import patcher_for

        with self._lock:
            old = self.model
            patcher = patcher_for(old.pipe)
            patcher.restore(release=True)
            patcher.forget({})
            del old, patcher
            self.model = None  # type: ignore[assignment]
            _free_memory(gc)
            try:
                self.model = load()
            except BaseException:
                self.model = reload_previous()
                raise
            finally:
                _free_memory(gc)
            self._base_scheduler_config = self.model.pipe.scheduler.config
            return self.model

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

    def _sample(self, run: Any, cond: Conditioning, *, generator: Any, batch: int, cfg: float,
                progress: Progress, **kwargs: Any) -> Any:
        """One pipeline call with per-step prompt switching, AND, progress and interrupt."""
        hook = ComposableHook(cond, batch) if cond.composable else None
        # what this pipeline's step-end callback may replace (SD3's img2img has no pooled embeddings)
        names = [n for n in cond.tensor_names if n in getattr(run, "_callback_tensor_inputs", cond.tensor_names)]
        names += ["latents"] if "latents" in getattr(run, "_callback_tensor_inputs", ()) else []  # the NaN watch

        def step_end(pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            progress.step(tensors.get("latents"))
            if self._interrupted.is_set() or self._skipped.is_set():
                pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
            if hook is not None:
                hook.step = step + 2
            else:
                update = cond.step_update(step, getattr(pipe, "do_classifier_free_guidance", False), batch)
                tensors.update((k, v) for k, v in update.items() if k in names)
            return tensors

        with composable(getattr(self.model.pipe, "unet", None), hook):
            return run(**cond.call_kwargs(batch, float(cfg)), generator=generator, callback_on_step_end=step_end,
                       callback_on_step_end_tensor_inputs=names, **kwargs).images

    def generate(self, request: Txt2ImgRequest, on_step: StepCallback | None = None, *,
                 save: bool = True, save_incomplete: bool | None = None) -> Txt2ImgResult:
        """Run a generation (batch_count x batch_size images) and, with `save`, write every image as
        a PNG with its infotext (else the images stay in memory: `outputs.png_bytes` encodes one as
        saving would); the patcher is synced before every pass. `save_incomplete` overrides the
        engine's `save_incomplete` for this generation (an API request's override_settings)."""
        check_request(request)
        if self.model.family in DIT_FAMILIES:
            check_dit_request(request, self.model.family)
        samplers = self.samplers
        sampler = sampler_by_label(request.sampler, samplers) if request.sampler else samplers[0]
        seed = random.randint(0, MAX_SEED) if request.seed < 0 else int(request.seed)
        steps, count, size = int(request.steps), int(request.batch_count), int(request.batch_size)
        clip_skip = max(1, int(request.clip_skip))
        init = None if request.init_image is None else open_image(request.init_image)
        strength = float(request.denoising_strength)
        first_steps = steps if init is None else img2img_steps(steps, strength)
        hires = request.hires
        hr_steps = (hires.steps or steps) if hires is not None else 0
        hr_run = img2img_steps(hr_steps, hires.denoising_strength) if hires is not None else 0
        progress = Progress(count * (first_steps + hr_run), on_step)

        pictures: list[tuple[Any, int, bool]] = []  # image, seed, whether it was cut short
        applied: dict[str, AppliedLora] = {}
        diagnostics: list[Diagnostic] = []
        with self._lock:
            self._interrupted.clear()
            self.model.pipe.scheduler = make_scheduler(sampler, self._base_scheduler_config, request.shift)
            for n in range(count):
                if n and self._interrupted.is_set():
                    break
                self._skipped.clear()  # a Skip ends the batch it came in, as A1111's
                seeds = [(seed + n * size + i) % SEED_SPAN for i in range(size)]
                start = progress.done
                images, used, notes = self._batch(request, seeds, init, progress)
                # read once, so the images, the message and the bar agree; an Interrupt or a Skip that
                # came after the batch's last step (while it decodes) cut nothing: its images are whole
                cut = self._cut() if progress.done < start + first_steps + hr_run else None
                pictures.extend((image, s, cut is not None) for image, s in zip(images, seeds))
                for a in used:
                    applied.setdefault(a.path, a)
                diagnostics.extend(d for d in notes if d not in diagnostics)
                if cut == "skip":
                    progress.skip_to(start + first_steps + hr_run)  # the skipped steps: the bar goes on to 100%
                    diagnostics.append(Diagnostic("I-SKIPPED", f"batch {n + 1} of {count} skipped: its images are unfinished",
                                                  severity="info", data={"batch": n + 1}))
        applied_list = list(applied.values())
        self.library.note_use(a.path for a in applied_list)  # for the gallery's "most used" / "last used" sorts
        nan = progress.diagnostic()
        diagnostics += [nan] if nan is not None else []
        if progress.done < progress.total and self._interrupted.is_set():
            diagnostics.append(Diagnostic("I-INTERRUPTED", f"interrupted after step {progress.done} of {progress.total}",
                                          severity="info", data={"step": progress.done}))
        return self._save(request, pictures, sampler=sampler, clip_skip=clip_skip, applied=applied_list,
                          diagnostics=diagnostics, img2img=init is not None, save=save,
                          incomplete=self.save_incomplete if save_incomplete is None else save_incomplete)

    def _batch(self, request: Txt2ImgRequest, seeds: list[int], init: Any,
               progress: Progress) -> tuple[list[Any], list[AppliedLora], list[Diagnostic]]:
        """One batch: the first pass (txt2img or img2img), then the hires pass when asked for (not
        after an Interrupt or a Skip)."""
        import torch

        from loraprompt.integrations.diffusers import activate
        from loraprompt.syntax import parse

        pipe, steps, batch = self.model.pipe, int(request.steps), len(seeds)
        clip_skip = max(1, int(request.clip_skip))
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        generator: Any = generators[0] if batch == 1 else generators
        hires = request.hires
        latent_hires = hires is not None and hires.upscaler in LATENT_UPSCALERS
        width, height = int(request.width), int(request.height)
        dit = self.model.family in DIT_FAMILIES
        with activate(pipe, request.prompt, self.library, steps=steps, on_error="skip", restore=False) as active, \
                torch.inference_mode():
            if dit:
                cond: Any = DitConditioning(pipe, self.model.family, str(active), request.negative_prompt, steps,
                                            distilled_cfg=request.distilled_cfg_scale)
                notes_extra = cond.notes()
            else:
                cond, notes_extra = Conditioning(pipe, str(active), request.negative_prompt, steps, clip_skip,
                                                 composable=True), []
            if init is None:
                out = self._sample(pipe, cond, generator=generator, batch=batch, cfg=request.cfg_scale, progress=progress,
                                   num_inference_steps=steps,
                                   width=width, height=height, output_type="latent" if latent_hires else "pil")
            else:
                run = img2img_pipeline(pipe)
                run.scheduler = pipe.scheduler
                strength = float(request.denoising_strength)
                picture = resize_image(request.resize_mode, init, width, height)
                image: Any = picture
                if request.resize_mode == LATENT_RESIZE:
                    image = resize_latents(encode(pipe, [picture]), width, height)
                pipe._num_timesteps = img2img_steps(steps, strength)  # what the LoRA step schedule counts
                out = self._sample(run, cond, generator=generator, batch=batch, cfg=request.cfg_scale, progress=progress,
                                   image=image, strength=strength, num_inference_steps=img2img_schedule(steps, strength),
                                   **({"width": width, "height": height} if dit else {}))  # the DiT pipelines' default: 1024
        used = self._applied(active.entries)
        notes = list(active.diagnostics) + notes_extra + negative_prompt_notes(request.negative_prompt)
        if hires is None or self._cut() is not None:
            return (decode(pipe, out) if latent_hires else list(out)), used, notes

        size = hires_size(width, height, hires)
        hr_steps = hires.steps or steps
        if latent_hires:
            mode, antialias = LATENT_UPSCALERS[hires.upscaler]
            upscaled: Any = crop_latents(resize_latents(out, size.upscale_w, size.upscale_h, mode, antialias), size)
        else:
            upscaled = upscale_images(list(out), size, hires.upscaler)
        hr_prompt = parse(hires.prompt or request.prompt).text
        hr_negative = hires.negative_prompt or request.negative_prompt
        run = img2img_pipeline(pipe)
        run.scheduler = pipe.scheduler
        with activate(pipe, hires_lora_prompt(request.prompt, hires.prompt), self.library, steps=hr_steps,
                      on_error="skip", restore=False) as hr_active, torch.inference_mode():
            hr_cond: Any = DitConditioning(pipe, self.model.family, hr_prompt, hr_negative, steps, hires_steps=hr_steps,
                                           distilled_cfg=request.distilled_cfg_scale) if dit else \
                Conditioning(pipe, hr_prompt, hr_negative, steps, clip_skip, composable=True, hires_steps=hr_steps)
            pipe._num_timesteps = img2img_steps(hr_steps, hires.denoising_strength)
            final = self._sample(run, hr_cond, generator=generator, batch=batch, cfg=request.cfg_scale, progress=progress,
                                 image=upscaled, strength=hires.denoising_strength,
                                 num_inference_steps=img2img_schedule(hr_steps, hires.denoising_strength),
                                 **({"width": size.width, "height": size.height} if dit else {}))
        used += [a for a in self._applied(hr_active.entries) if a not in used]
        # the hires tags are rewritten from the first pass's: the same message at another span is no news
        seen = {(d.code, d.subject, d.message) for d in notes}
        notes += [replace(d, message=f"hires pass: {d.message}") for d in hr_active.diagnostics  # its spans are the hires prompt's
                  if (d.code, d.subject, d.message) not in seen]
        return list(final), used, notes

    def _save(self, request: Txt2ImgRequest, pictures: list[tuple[Any, int, bool]], *, sampler: Any, clip_skip: int,
              applied: list[AppliedLora], diagnostics: list[Diagnostic], img2img: bool, save: bool,
              incomplete: bool) -> Txt2ImgResult:
        """Every image (and the grid of a batch) with A1111 infotext, written to files when `save`;
        as in A1111, an image an Interrupt or a Skip cut short (and a grid with one) only with
        `incomplete` (it is shown all the same)."""
        from loraprompt.ui.xy_grid import image_grid

        kind = "img2img" if img2img else "txt2img"
        extra = infotext_extra(request, clip_skip, img2img)
        saved: list[GeneratedImage] = []
        for image, image_seed, cut in pictures:
            info = GenerationInfo(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                steps=int(request.steps),
                sampler=sampler.name,
                schedule_type=sampler.schedule_type,
                cfg_scale=float(request.cfg_scale),
                seed=image_seed,
                width=int(request.width),
                height=int(request.height),
                model=self.model.name,
                model_hash=self.model.model_hash,
                lora_hashes={a.name: a.short_hash for a in applied if a.short_hash},
                extra=extra,
                **dit_infotext(self.model.pipe, self.model.family, request, model_shift(self._base_scheduler_config)),
            )
            infotext = format_infotext(info)
            keep = save and (incomplete or not cut)
            path = save_png(image, infotext, self.outputs_dir, image_seed, f"{kind}-images") if keep else None
            saved.append(GeneratedImage(image, path, infotext, image_seed))
        unsaved = sum(g.path is None for g in saved) if save else 0
        if unsaved:
            diagnostics.append(Diagnostic("I-NOT-SAVED", f"{unsaved} unfinished image(s) not saved; start with "
                                          "--save-incomplete-images (API: save_incomplete_images) to keep them", severity="info", data={"images": unsaved}))
        first = saved[0]
        result = Txt2ImgResult(first.image, first.path, first.infotext, first.seed, applied, diagnostics, saved)
        if len(saved) > 1:
            result.grid = image_grid([g.image for g in saved])
            if save and not unsaved:
                result.grid_path = save_png(result.grid, first.infotext, self.outputs_dir, first.seed, f"{kind}-grids")
        return result


def _free_memory(gc: Any) -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
