"""A1111's hires fix over `POST /sdapi/v1/txt2img`: its `enable_hr` / `hr_*` fields checked and
turned into the engine's `HiresOptions` (the same hires pass the web UI runs), before the queue.

What A1111 v1.10.1 does, and what this server does with it (modules/processing.py,
StableDiffusionProcessingTxt2Img):
- `hr_upscaler` None is A1111's default latent mode, "Latent"; an upscaler neither A1111's latent
  modes nor one of the engine's image upscalers (Lanczos, Nearest) is a 422 naming the field (A1111
  raises "could not find upscaler named ..." while processing, a 500).
- `hr_resize_x` / `hr_resize_y` (non-zero) replace `hr_scale`; `hr_second_pass_steps` 0 is `steps`.
- `denoising_strength` not given: A1111's API model leaves it None, which its hires pass cannot run
  with; here it is 0.75, StableDiffusionProcessingTxt2Img's own default.
- `hr_prompt` / `hr_negative_prompt` "" are the first pass's prompts (of each image).
- `hr_checkpoint_name`: only this server's one model (or A1111's "Use same checkpoint"); another is
  a 422, as A1111 fails for a checkpoint it does not have.
- `hr_sampler_name` / `hr_scheduler` other than the first pass's, and Forge's `hr_cfg` other than
  `cfg_scale`: the engine's hires pass runs with the first pass's sampler and CFG, so they are
  named in `info["warnings"]` (after a 422 for a sampler the model does not have)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel

from loraprompt.serve.errors import ServeError, invalid
from loraprompt.serve.jobs import ImageTask
from loraprompt.serve.service import Service, sampler_label
from loraprompt.ui.dit_prompt import DIT_FAMILIES
from loraprompt.ui.hires import HIRES_UPSCALERS, IMAGE_UPSCALERS, LATENT_UPSCALERS, HiresOptions, hires_size

DEFAULT_UPSCALER = "Latent"  # A1111's shared.latent_upscale_default_mode, used when hr_upscaler is None
DEFAULT_DENOISING = 0.75  # StableDiffusionProcessingTxt2Img.denoising_strength
SAME_CHECKPOINT = "Use same checkpoint"  # what A1111's UI sends for "no other checkpoint"
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"


class HiresFields(BaseModel):
    """A1111's hires fields of StableDiffusionProcessingTxt2Img, with its API defaults."""

    enable_hr: bool = False
    denoising_strength: float | None = None
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


def upscalers_for(family: str) -> tuple[str, ...]:
    """The hires upscalers the engine runs on a model of `family`."""
    return IMAGE_UPSCALERS if family in DIT_FAMILIES else HIRES_UPSCALERS


def hires_options(service: Service, body: Any, *, title: str, sampler: str) -> tuple[HiresOptions | None, list[str]]:
    """The engine's hires settings for `body` (None without `enable_hr`) and the warnings for what it
    asks that the hires pass will not do (`title`: the model's A1111 title; `sampler`: the first
    pass's sampler label); 422 naming the field for what cannot run."""
    if not body.enable_hr:
        return None, []
    model = service.model
    upscaler = body.hr_upscaler or DEFAULT_UPSCALER
    offered = upscalers_for(model.family)
    if upscaler not in offered:
        why = ("the latent upscalers are for SD models; " if upscaler in LATENT_UPSCALERS else "unknown upscaler; ")
        raise invalid("hr_upscaler", f"{why}{upscaler!r} is not one this server has; choose one of: "
                      f"{', '.join(offered)}", choices=list(offered))
    strength = DEFAULT_DENOISING if body.denoising_strength is None else body.denoising_strength
    if not 0 < strength <= 1:
        raise invalid("denoising_strength", f"must be greater than 0 and at most 1 with enable_hr, got {strength:g}")
    for key in ("hr_resize_x", "hr_resize_y", "hr_second_pass_steps"):
        if getattr(body, key) < 0:
            raise invalid(key, f"must not be negative, got {getattr(body, key)}")
    resized = bool(body.hr_resize_x or body.hr_resize_y)
    if not resized and not 1 <= body.hr_scale <= 8:
        raise invalid("hr_scale", f"must be from 1 to 8 (or give hr_resize_x / hr_resize_y), got {body.hr_scale:g}")
    if body.hr_second_pass_steps > service.limits.max_steps:
        raise invalid("hr_second_pass_steps", f"must be at most {service.limits.max_steps} (--max-steps), "
                      f"got {body.hr_second_pass_steps}")
    opts = HiresOptions(upscaler=upscaler, scale=body.hr_scale, resize_x=body.hr_resize_x, resize_y=body.hr_resize_y,
                        steps=body.hr_second_pass_steps, denoising_strength=strength, prompt=body.hr_prompt,
                        negative_prompt=body.hr_negative_prompt)
    size = hires_size(body.width, body.height, opts)
    lim = service.limits.max_size
    for side, value, fields in (("width", size.width, "hr_resize_x"), ("height", size.height, "hr_resize_y")):
        if not 64 <= value <= lim:
            field = fields if resized else "hr_scale"
            raise invalid(field, f"makes a hires {side} of {value}; it must be from 64 to {lim} (--max-size)")
    if body.hr_checkpoint_name not in (None, "", SAME_CHECKPOINT, title, model.name):
        raise invalid("hr_checkpoint_name", f"only {title!r} is loaded; this server cannot switch models for the "
                      "hires pass", choices=[SAME_CHECKPOINT, title])
    return opts, _warnings(body, sampler, model.samplers)


def _warnings(body: Any, sampler: str, samplers: Any) -> list[str]:
    """Lines for a hires sampler / scheduler / CFG other than the first pass's (which the hires pass uses)."""
    warnings = []
    name = None if body.hr_sampler_name in (None, "", SAME_SAMPLER) else body.hr_sampler_name
    scheduler = None if body.hr_scheduler in (None, "", SAME_SCHEDULER) else body.hr_scheduler
    if name is not None or scheduler is not None:
        field = "hr_sampler_name" if name is not None else "hr_scheduler"
        try:
            label = sampler_label(name or body.sampler_name or body.sampler_index, scheduler or body.scheduler,
                                  field, samplers)
        except ServeError as exc:  # A1111 fails too for a sampler or scheduler it does not have
            raise invalid(field, exc.message, **exc.ctx) from None
        if label != sampler:
            warnings.append(f"hr_sampler_name={body.hr_sampler_name!r}, hr_scheduler={body.hr_scheduler!r}: the hires "
                            f"pass runs with the first pass's sampler ({sampler!r}) in loraprompt serve; ignored")
    extra = body.model_extra or {}
    for key, first in (("hr_cfg", body.cfg_scale), ("hr_distilled_cfg", body.distilled_cfg_scale)):  # Forge's
        if extra.get(key) is not None and extra[key] != first:
            warnings.append(f"{key}={extra[key]!r}: the hires pass uses the first pass's value ({first:g}) in "
                            "loraprompt serve; ignored")
    return warnings


def with_hires(service: Service, task: ImageTask, hires: HiresOptions) -> ImageTask:
    """`task` with the hires pass, pinning the LoRAs its hires prompt names too."""
    pins = service.library.pins_in(hires.prompt) if hires.prompt else ()
    return ImageTask(dataclasses.replace(task.request, hires=hires), tuple(dict.fromkeys(task.pins + pins)))
