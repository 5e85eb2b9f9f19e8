"""Automatic1111's `/sdapi/v1/*` as its clients (e.g. the `webuiapi` package) use it: txt2img
(its hires fix: `sdapi_hires`; img2img: `sdapi_img2img`; the lists clients read at start-up:
`sdapi_lists`), loras, refresh-loras, samplers, schedulers, sd-models, options, progress, interrupt.

`prompt` (and `negative_prompt`) may also be a list, one per image: each image then gets the
LoRAs its own prompt names (A1111 lets the first prompt decide for the whole batch).
Fields A1111 has and this server does not use are accepted, and named in `info["warnings"]`
when their value would change the image."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraprompt.infotext import parse_infotext
from loraprompt.library.safetensors_header import decoded_metadata
from loraprompt.models.samplers import sampler_by_label
from loraprompt.serve.errors import ServeError, invalid
from loraprompt.serve.jobs import ImageTask, Job
from loraprompt.serve.sdapi_hires import HiresFields, hires_options, with_hires
from loraprompt.serve.service import (
    MAX_CLIP_SKIP,
    ModelInfo,
    Service,
    sampler_label,
    sampler_names,
    scheduler_name,
    schedulers_of,
)
from loraprompt.ui.txt2img import Txt2ImgRequest

log = logging.getLogger("loraprompt.serve")


class Txt2ImgBody(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, the fields this server uses; any other field
    is kept (extra="allow") and looked at by `unused_warnings`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str | list[str] = ""
    negative_prompt: str | list[str] = ""
    steps: int = 50
    cfg_scale: float = 7.0
    seed: int | None = -1  # None (A1111's fields are all optional) or -1: a random seed
    width: int = 512
    height: int = 512
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    distilled_cfg_scale: float = Field(default=3.5, ge=0, le=30)  # Forge's: Flux.1-dev's guidance (others ignore it)
    batch_size: int = 1
    n_iter: int = 1
    send_images: bool = True
    save_images: bool = False
    override_settings: dict[str, Any] | None = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True  # false: the overrides stay set, as POST /options sets them


class Txt2ImgHiresBody(Txt2ImgBody, HiresFields):
    """txt2img's body: the fields above and A1111's hires fix (`sdapi_hires`)."""


# A1111 fields that change the image when set, and the value at which they do nothing
_INERT: dict[str, tuple[Any, ...]] = {
    "enable_hr": (False, None),  # on img2img (txt2img's body has the field)
    "restore_faces": (False, None),
    "tiling": (False, None),
    "subseed_strength": (0, 0.0, None),
    "styles": ([], None),
    "alwayson_scripts": ({}, None),
    "script_name": (None, ""),
    "script_args": ([], None),
    "refiner_checkpoint": (None, ""),
    "init_images": ([], None),
    "mask": (None, ""),
}
# A1111 fields that are inert here whatever their value (sampler fine-tuning, saving, hires
# settings that only act with enable_hr (txt2img reads them: sdapi_hires), tracking)
_QUIET = {
    "sampler_index", "subseed", "seed_resize_from_h", "seed_resize_from_w", "eta", "s_churn", "s_tmax", "s_tmin",
    "s_noise", "s_min_uncond", "do_not_save_samples", "do_not_save_grid",
    "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "hr_additional_modules", "hr_cfg", "hr_distilled_cfg", "denoising_strength", "refiner_switch_at", "disable_extra_networks", "comments",
    "force_task_id", "infotext", "firstpass_image", "user",
}
_USED_SETTINGS = {"CLIP_stop_at_last_layers", "sd_model_checkpoint", "samples_format", "save_incomplete_images"}


def unused_warnings(body: Txt2ImgBody, model_title: str, model_name: str, *, quiet: set[str] | None = None,
                    inert: dict[str, tuple[Any, ...]] | None = None) -> list[str]:
    """One line per A1111 field that was set to something this server does not do (`quiet` and
    `inert`: more fields, as `_QUIET` and `_INERT`, of the route's own)."""
    warnings: list[str] = []
    extra = body.model_extra or {}
    inert_at = {**_INERT, **(inert or {})}
    for key, value in extra.items():
        if key in inert_at:
            if value not in inert_at[key]:
                warnings.append(f"{key}={json.dumps(value)[:80]} is not supported by loraprompt serve; ignored")
        elif key not in _QUIET and key not in (quiet or ()):
            warnings.append(f"unknown field {key!r} ignored")
    for key, value in (body.override_settings or {}).items():
        if key == "sd_model_checkpoint" and value not in (model_title, model_name):
            warnings.append(f"override_settings.sd_model_checkpoint={value!r}: only {model_title!r} is loaded; ignored")
        elif key == "samples_format" and value != "png":
            warnings.append(f"override_settings.samples_format={value!r}: loraprompt serve answers PNG only; ignored")
        elif key not in _USED_SETTINGS:
            warnings.append(f"override_settings.{key} is not supported by loraprompt serve; ignored")
    return warnings


def _per_image(value: str | list[str], count: int, field: str) -> list[str]:
    if isinstance(value, str):
        return [value] * count
    if len(value) != count:
        raise invalid(field, f"has {len(value)} prompts for {count} images (batch_size x n_iter)")
    return list(value)


def png_b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def model_title(service: Service) -> str:
    m = service.model
    return f"{m.name} [{m.model_hash}]" if m.model_hash else m.name


def check_clip_skip(value: Any, field: tuple[str, ...], model: ModelInfo) -> None:
    """422 naming `field` unless `value` is a clip skip the loaded model can run: an integer from 1
    to its text encoder's layer count, at most 12 (A1111's setting)."""
    top = model.max_clip_skip
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
        why = ""
        if model.family in ("sd3", "flux"):
            why = " (SD3 and Flux.1 read their text encoders as trained)"
        elif top < MAX_CLIP_SKIP:
            why = f" (the loaded model's text encoder has {top} layers)"
        raise invalid(field, f"must be an integer from 1 to {top}{why}, got {value!r}", maximum=top)


def set_option(service: Service, key: str, value: Any) -> None:
    """Set one of A1111's settings this server keeps (checked by the caller); they are global, as
    A1111's: the web UI beside the API follows `save_incomplete_images` too."""
    service.options[key] = value
    if key == "save_incomplete_images" and service.engine is not None:
        service.engine.save_incomplete = value


def check_flag(value: Any, field: tuple[str, ...]) -> None:
    """422 naming `field` unless `value` is true or false (A1111's checkbox settings)."""
    if not isinstance(value, bool):
        raise invalid(field, f"must be true or false, got {value!r}")


def txt2img_tasks(service: Service, body: Txt2ImgBody) -> tuple[list[ImageTask], int]:
    """The images a txt2img body asks for, checked against the limits; and the clip skip."""
    count = body.batch_size * body.n_iter
    if body.batch_size < 1:
        raise invalid("batch_size", f"must be at least 1, got {body.batch_size}")
    if body.n_iter < 1:
        raise invalid("n_iter", f"must be at least 1, got {body.n_iter}")
    service.check(steps=body.steps, width=body.width, height=body.height, images=count)
    label = sampler_label(body.sampler_name or body.sampler_index, body.scheduler,
                          "sampler_name" if body.sampler_name else "sampler_index", service.model.samplers)
    settings = body.override_settings or {}
    if "save_incomplete_images" in settings:
        check_flag(settings["save_incomplete_images"], ("override_settings", "save_incomplete_images"))
    if "CLIP_stop_at_last_layers" in settings:
        clip_skip = settings["CLIP_stop_at_last_layers"]
        check_clip_skip(clip_skip, ("override_settings", "CLIP_stop_at_last_layers"), service.model)
    else:  # set through /options for the model then loaded: the web UI may have switched to a shallower one
        clip_skip = min(service.options["CLIP_stop_at_last_layers"], service.model.max_clip_skip)
    prompts = _per_image(body.prompt, count, "prompt")
    negatives = _per_image(body.negative_prompt, count, "negative_prompt")
    seeds = service.seeds(body.seed, count)
    tasks = [ImageTask(Txt2ImgRequest(p, n, body.steps, body.cfg_scale, s, body.width, body.height, label, clip_skip,
                                      distilled_cfg_scale=body.distilled_cfg_scale),
                       service.library.pins_in(p))
             for p, n, s in zip(prompts, negatives, seeds)]
    return tasks, clip_skip


def txt2img_info(service: Service, body: Txt2ImgBody, job: Job, *, label: str, clip_skip: int,
                 warnings: list[str]) -> dict[str, Any]:
    """A1111's `info` (Processed.js()) for the images made, plus `warnings` and `loras`."""
    images = job.images
    done = [t.request for t, o in zip(job.tasks, job.outputs) if o is not None]
    first = done[0] if done else job.tasks[0].request
    fields = parse_infotext(images[0].infotext) if images else {}
    sampler = sampler_by_label(label, service.model.samplers)  # listed, or a schedule variant ("Euler Karras")
    extra = {k: v for k, v in fields.items()
             if k == "Lora hashes" or (first.hires is not None and (k == "Denoising strength" or k.startswith("Hires ")))}
    return {
        "prompt": first.prompt,
        "all_prompts": [t.prompt for t in done],
        "negative_prompt": first.negative_prompt,
        "all_negative_prompts": [t.negative_prompt for t in done],
        "seed": first.seed,
        "all_seeds": [o.seed for o in images],
        "subseed": first.seed,
        "all_subseeds": [o.seed for o in images],
        "subseed_strength": 0,
        "width": body.width,
        "height": body.height,
        "sampler_name": sampler.name,
        "scheduler": scheduler_name(sampler.schedule_type) if sampler.schedule_type else "automatic",
        "cfg_scale": body.cfg_scale,
        "steps": body.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": service.model.name,
        "sd_model_hash": service.model.model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": first.hires.denoising_strength if first.hires is not None else None,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": [o.infotext for o in images],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": _version(),
        "warnings": warnings + job.warnings,
        "loras": [o.loras for o in images],
        "replicas": [o.replica for o in images],
        "interrupted": job.interrupted,
    }


def _version() -> str:
    import loraprompt

    return f"loraprompt {loraprompt.__version__}"


def generate(service: Service, route: str, tasks: list[ImageTask], body: Any, *, clip_skip: int,
             warnings: list[str]) -> tuple[Job, dict[str, Any]]:
    """Log a request's warnings, run its images on the model queue and wait for them: the finished
    job and its info (A1111's fields); a failed generation is a 500 (A1111's error shape)."""
    for w in warnings:
        log.warning("%s: %s", route, w)
    keep_incomplete = (body.override_settings or {}).get("save_incomplete_images", service.options["save_incomplete_images"])
    job = service.run(tasks, keep=body.save_images, keep_incomplete=keep_incomplete)
    job.wait()
    if not body.override_settings_restore_afterwards:  # A1111 keeps the overrides set for later requests
        for key in ("CLIP_stop_at_last_layers", "save_incomplete_images"):
            if key in (body.override_settings or {}):
                set_option(service, key, body.override_settings[key])  # checked with the request
    if job.status == "failed":
        raise ServeError(500, (), f"generation failed: {job.error}")
    return job, txt2img_info(service, body, job, label=tasks[0].request.sampler, clip_skip=clip_skip, warnings=warnings)


def add_routes(router: Any, service: Service) -> None:
    """Register the /sdapi/v1 routes on a FastAPI app or router (plain functions: FastAPI runs
    them in its threadpool, so waiting for the model never blocks the event loop)."""

    @router.post("/sdapi/v1/txt2img")
    def txt2img(body: Txt2ImgHiresBody) -> dict[str, Any]:
        tasks, clip_skip = txt2img_tasks(service, body)  # the limits, the sampler and the prompts first
        hires, warnings = hires_options(service, body, title=model_title(service), sampler=tasks[0].request.sampler)
        if hires is not None:
            tasks = [with_hires(service, t, hires) for t in tasks]
        warnings = unused_warnings(body, model_title(service), service.model.name) + warnings
        job, info = generate(service, "txt2img", tasks, body, clip_skip=clip_skip, warnings=warnings)
        return {
            "images": [png_b64(o.png) for o in job.images] if body.send_images else [],
            "parameters": body.model_dump(),
            "info": json.dumps(info),
        }

    @router.get("/sdapi/v1/loras")
    def loras() -> list[dict[str, Any]]:
        return [{"name": e.name, "alias": e.alias, "path": e.path, "metadata": decoded_metadata(e.path)}
                for e in service.library.base.entries if not e.error]

    @router.post("/sdapi/v1/refresh-loras")
    def refresh_loras() -> None:
        service.library.base.refresh()

    @router.get("/sdapi/v1/samplers")
    def samplers() -> list[dict[str, Any]]:
        samplers = service.model.samplers  # the loaded model's: flow-matching ones for SD3 and Flux
        out = []
        for name in sampler_names(samplers):
            mine = [s for s in samplers if s.name == name]
            default = mine[0].schedule_type  # what "automatic" gives, as A1111's options say it
            out.append({"name": name, "aliases": [s.label for s in mine if s.label != name],
                        "options": {"scheduler": scheduler_name(default)} if default else {}})
        return out

    @router.get("/sdapi/v1/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return [{"name": s, "label": s.capitalize(), "aliases": None, "default_rho": -1, "need_inner_model": False}
                for s in schedulers_of(service.model.samplers)]

    @router.get("/sdapi/v1/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        m = service.model
        return [{"title": model_title(service), "model_name": m.name, "hash": m.model_hash, "sha256": None,
                 "filename": m.name, "config": None}]

    @router.get("/sdapi/v1/options")
    def options() -> dict[str, Any]:
        return {"sd_model_checkpoint": model_title(service), "samples_format": "png",
                "sd_checkpoint_hash": service.model.model_hash, **service.options}

    @router.post("/sdapi/v1/options")
    def set_options(body: dict[str, Any]) -> None:
        """A1111's settings that persist: the clip skip of later generations (a request's
        override_settings still wins); the checkpoint and PNG format only as they are."""
        wanted = body.get("sd_model_checkpoint")
        if wanted is not None and wanted not in (model_title(service), service.model.name):
            raise invalid("sd_model_checkpoint", f"only {model_title(service)!r} is loaded; this server cannot switch models",
                          choices=[model_title(service)])
        if body.get("samples_format", "png") != "png":
            log.warning("options: samples_format=%r: loraprompt serve answers PNG only; ignored", body["samples_format"])
        if "CLIP_stop_at_last_layers" in body:
            check_clip_skip(body["CLIP_stop_at_last_layers"], ("CLIP_stop_at_last_layers",), service.model)
            set_option(service, "CLIP_stop_at_last_layers", body["CLIP_stop_at_last_layers"])
        if "save_incomplete_images" in body:
            check_flag(body["save_incomplete_images"], ("save_incomplete_images",))
            set_option(service, "save_incomplete_images", body["save_incomplete_images"])
        for key in body:
            if key not in _USED_SETTINGS:
                log.warning("options: %s is not supported by loraprompt serve; ignored", key)

    @router.get("/sdapi/v1/progress")
    def progress() -> dict[str, Any]:
        job = service.backend.current
        pending = service.backend.pending
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                    "state": {"skipped": False, "interrupted": False, "job": "", "job_count": pending,
                              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
        total = len(job.tasks)
        steps = job.steps or job.tasks[0].request.steps
        fraction = (job.image_no + job.step / max(steps, 1)) / max(total, 1)
        elapsed = time.time() - (job.started_at or time.time())
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return {"progress": round(fraction, 4), "eta_relative": round(eta, 3), "current_image": None, "textinfo": None,
                "state": {"skipped": False, "interrupted": job.interrupted, "job": f"job {job.id[:8]}",
                          "job_count": pending + 1, "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created_at)),
                          "job_no": job.image_no, "sampling_step": job.step, "sampling_steps": steps}}

    @router.post("/sdapi/v1/interrupt")
    def interrupt() -> None:
        service.backend.interrupt()
