"""Replicate-style predictions: `POST /predictions` with `{"input": {...}}`, `GET
/predictions/{id}`, `POST /predictions/{id}/cancel`; asynchronous unless the request says
`Prefer: wait` (or `wait=N` seconds), as Replicate's API does.

The inputs are those of Replicate's LoRA model (`prompt` with `<1>`, `<2>` standing for the
LoRAs' trigger words, `lora_urls` and `lora_scales` separated by `|`) and of its Flux fine-tunes
(`lora_weights` + `lora_scale`, `extra_lora` + `extra_lora_scale`, `aspect_ratio`,
`output_format`, `output_quality`). Outputs are data URIs (no file host here)."""

from __future__ import annotations

import base64
import io
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraprompt.serve.errors import ServeError, invalid
from loraprompt.serve.jobs import ImageTask, Job
from loraprompt.serve.loras import DownloadFailed, trigger_of
from loraprompt.serve.service import Service, default_sampler, sampler_label
from loraprompt.ui.txt2img import Txt2ImgRequest

log = logging.getLogger("loraprompt.serve")

# Replicate's scheduler names -> the web UI's sampler names (its own labels are accepted too; on a
# flow-matching model a name takes the model's default schedule: "K_EULER" is "Euler Simple")
SCHEDULERS: dict[str, str] = {
    "K_EULER_ANCESTRAL": "Euler a",
    "K_EULER": "Euler",
    "DPMSolverMultistep": "DPM++ 2M",
    "KarrasDPM": "DPM++ 2M Karras",
    "DDIM": "DDIM",
    "HeunDiscrete": "Heun",
    "UniPCMultistep": "UniPC",
}
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21", "custom")
_TRIGGER = re.compile(r"<(\d+)>")
_QUIET = {"disable_safety_checker", "go_fast", "megapixels", "model", "replicate_weights", "prompt_strength",
          "image", "mask", "adapter_condition_image", "adapter_type"}


class PredictionInput(BaseModel):
    """The inputs of Replicate's LoRA and Flux fine-tune models that apply to txt2img here."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str
    negative_prompt: str = ""
    width: int | None = Field(default=None, description="default: the model's native size")
    height: int | None = None
    aspect_ratio: Literal["1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21", "custom"] | None = None
    num_inference_steps: int = 30
    guidance_scale: float | None = Field(default=None, ge=0, le=30,
                                         description="CFG scale (default 7.5); on Flux.1 the distilled guidance, as diffusers' FluxPipeline")
    guidance: float | None = Field(default=None, ge=0, le=30, description="Flux.1-dev's distilled guidance (default 3.5)")
    scheduler: str | None = None
    num_outputs: int = 1
    seed: int | None = None
    lora_urls: str | list[str] = ""
    lora_scales: str | float | list[float] = "0.5"
    lora_weights: str | None = None
    lora_scale: float = Field(default=1.0, ge=-1, le=3)
    extra_lora: str | None = None
    extra_lora_scale: float = Field(default=1.0, ge=-1, le=2)
    output_format: Literal["png", "jpg", "webp"] = "png"
    output_quality: int = Field(default=80, ge=0, le=100)


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: PredictionInput
    id: str | None = None


@dataclass
class Prediction:
    """One prediction as Replicate describes it."""

    id: str
    input: dict[str, Any]
    output_format: str = "png"
    output_quality: int = 80
    status: str = "starting"
    output: list[str] | None = None
    error: str | None = None
    logs: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    job: Job | None = None
    lora_names: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        job = self.job
        status = self.status
        if job is not None and status == "starting" and job.status == "running":
            status = "processing"
        logs = self.logs + (job.logs if job is not None else [])
        metrics: dict[str, Any] = {}
        started = self.started_at or (job.started_at if job else None)
        if started and self.completed_at:
            metrics["predict_time"] = round(self.completed_at - started, 4)
        if self.output is not None:
            metrics["image_count"] = len(self.output)
        return {
            "id": self.id,
            "version": "loraprompt",
            "input": self.input,
            "status": status,
            "output": self.output,
            "error": self.error,
            "logs": "\n".join(logs),
            "metrics": metrics,
            "created_at": _iso(self.created_at),
            "started_at": _iso(started),
            "completed_at": _iso(self.completed_at),
            "urls": {"get": f"/predictions/{self.id}", "cancel": f"/predictions/{self.id}/cancel"},
        }


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def aspect_size(ratio: str, side: int) -> tuple[int, int]:
    """(width, height) of `ratio` with about side*side pixels, sides multiples of 8."""
    a, b = (int(x) for x in ratio.split(":"))
    width = side * (a / b) ** 0.5
    height = side * (b / a) ** 0.5
    return max(64, round(width / 8) * 8), max(64, round(height / 8) * 8)


def _scales(value: str | float | list[float], count: int) -> list[float]:
    if isinstance(value, (int, float)):
        values = [float(value)]
    elif isinstance(value, list):
        values = [float(v) for v in value]
    else:
        try:
            values = [float(v) for v in value.split("|") if v.strip()] or [0.5]
        except ValueError:
            raise invalid(("input", "lora_scales"), f"{value!r} is not numbers separated by '|'") from None
    bad = next((v for v in values if not -1 <= v <= 3), None)  # NaN fails both comparisons
    if bad is not None:
        raise invalid(("input", "lora_scales"), f"scales must be numbers from -1 to 3 (as lora_scale), got {bad:g}")
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise invalid(("input", "lora_scales"), f"has {len(values)} scales for {count} LoRAs in lora_urls")
    return values


def encode(png: bytes, fmt: str, quality: int) -> str:
    """A data URI of the image in `fmt` (png keeps the infotext chunk)."""
    if fmt == "png":
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG" if fmt == "jpg" else "WEBP", quality=quality)
    mime = "image/jpeg" if fmt == "jpg" else "image/webp"
    return f"data:{mime};base64," + base64.b64encode(out.getvalue()).decode("ascii")


def prepare(service: Service, pred: Prediction, inp: PredictionInput) -> list[ImageTask]:
    """Resolve the LoRAs (403/404/413 raised; an unreachable URL raises DownloadFailed), put the
    triggers in place of `<N>` and the tags at the end, and make one task per output."""
    refs: list[tuple[str, float, tuple[str, ...]]] = []
    urls = inp.lora_urls if isinstance(inp.lora_urls, list) else inp.lora_urls.split("|")
    urls = [u.strip() for u in urls if u.strip()]
    refs += [(u, s, ("input", "lora_urls")) for u, s in zip(urls, _scales(inp.lora_scales, len(urls)))]
    if inp.lora_weights:
        refs.append((inp.lora_weights, inp.lora_scale, ("input", "lora_weights")))
    if inp.extra_lora:
        refs.append((inp.extra_lora, inp.extra_lora_scale, ("input", "extra_lora")))
    tags, triggers, names = [], [], []
    for ref, scale, where in refs:
        path = service.sources.resolve(ref, where)
        name = service.library.pin(path)
        word = trigger_of(service.library, path)
        pred.logs.append(f"LoRA {ref} -> {path} as <lora:{name}:{scale:g}> (trigger {word!r})")
        tags.append(f"<lora:{name}:{scale:g}>")
        triggers.append(word)
        names.append(name)
    pred.lora_names = tuple(names)

    def trigger(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if not 1 <= n <= len(triggers):
            raise invalid(("input", "prompt"), f"<{n}> names LoRA {n}, but {len(triggers)} LoRA(s) were given")
        return triggers[n - 1]

    prompt = _TRIGGER.sub(trigger, inp.prompt)
    prompt = " ".join([prompt, *tags]) if tags else prompt
    side = service.model.native_size
    if inp.aspect_ratio and inp.aspect_ratio != "custom":
        width, height = aspect_size(inp.aspect_ratio, side)
    else:
        width, height = inp.width or side, inp.height or side
    service.check(steps=inp.num_inference_steps, width=width, height=height, images=inp.num_outputs,
                  fields={"steps": "input.num_inference_steps", "width": "input.width", "height": "input.height",
                          "images": "input.num_outputs"})
    label = _sampler(service, inp.scheduler)
    cfg, distilled = _guidance(service, pred, inp)
    pins = service.library.pins_in(prompt)
    seeds = service.seeds(inp.seed, inp.num_outputs)
    pred.logs.append(f"prompt: {prompt}")
    pred.logs.append(f"seeds: {', '.join(map(str, seeds))}; sampler {label}; {width}x{height}, {inp.num_inference_steps} steps")
    return [ImageTask(Txt2ImgRequest(prompt, inp.negative_prompt, inp.num_inference_steps, cfg, s,
                                     width, height, label, 1, distilled_cfg_scale=distilled), pins) for s in seeds]


def _sampler(service: Service, wanted: str | None) -> str:
    """The sampler label for Replicate's `scheduler` input on the loaded model (None: its default)."""
    samplers = service.model.samplers
    name = SCHEDULERS.get(wanted, wanted) if wanted else default_sampler(samplers)
    if any(s.label == name for s in samplers):
        return name  # "DPM++ 2M" on an SD model is that label (the model's own schedule), not its Karras default
    try:
        return sampler_label(name, None, "scheduler", samplers)
    except ServeError:
        choices = [k for k, v in SCHEDULERS.items() if any(v in (s.name, s.label) for s in samplers)]
        choices += [s.label for s in samplers]
        raise invalid(("input", "scheduler"), f"unknown scheduler {wanted!r} for this model; choose one of: "
                      f"{', '.join(choices)}", choices=choices) from None


def _guidance(service: Service, pred: Prediction, inp: PredictionInput) -> tuple[float, float]:
    """(CFG scale, distilled guidance). On Flux.1 both `guidance` and `guidance_scale` are the
    distilled guidance (Replicate's Flux models, and diffusers' FluxPipeline, call it either) and
    true CFG stays off; elsewhere `guidance_scale` is the CFG scale and `guidance` does not apply."""
    if service.model.family == "flux":
        if inp.guidance is not None and inp.guidance_scale is not None and inp.guidance != inp.guidance_scale:
            pred.logs.append(f"note: 'guidance' {inp.guidance:g} is used; 'guidance_scale' {inp.guidance_scale:g} ignored")
        found = inp.guidance if inp.guidance is not None else inp.guidance_scale
        return 1.0, 3.5 if found is None else found
    if inp.guidance is not None:
        pred.logs.append("note: input 'guidance' (Flux.1's distilled guidance) does not apply here; ignored")
    return 7.5 if inp.guidance_scale is None else inp.guidance_scale, 3.5


def finish(pred: Prediction, job: Job) -> None:
    """Copy a finished job into its prediction."""
    pred.completed_at = job.completed_at
    if job.status == "succeeded":
        missing = [n for n in pred.lora_names for o in job.images if n not in {x["name"] for x in o.loras}]
        if missing:
            reasons = [d["message"] for o in job.images for d in o.diagnostics if d["severity"] == "error"]
            pred.status, pred.error = "failed", f"LoRA {missing[0]} could not be applied: {'; '.join(reasons) or 'unknown'}"
            pred.logs.append(f"error: {pred.error}")
            return
        pred.output = [encode(o.png, pred.output_format, pred.output_quality) for o in job.images]
        pred.status = "succeeded"
    elif job.status == "canceled":
        pred.status = "canceled"
    else:
        pred.status, pred.error = "failed", job.error


def _finite(value: Any) -> bool:
    """Whether `value` (parsed JSON) holds no NaN or infinity."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _prefer_wait(prefer: str | None) -> float | None:
    """Seconds to wait for `Prefer: wait` / `Prefer: wait=N` (Replicate caps it at 60)."""
    for part in (prefer or "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "wait":
            try:
                return max(1.0, min(60.0, float(value))) if value else 60.0
            except ValueError:
                return 60.0
    return None


def add_routes(router: Any, service: Service) -> None:
    """Register the /predictions routes on a FastAPI app or router."""
    from fastapi import Header
    from fastapi.responses import JSONResponse

    store: dict[str, Prediction] = service.predictions

    def remember(pred: Prediction) -> None:
        store[pred.id] = pred
        done = [k for k, p in store.items() if p.completed_at is not None]
        for key in done[: max(0, len(store) - service.keep_predictions)]:
            del store[key]

    @router.post("/predictions", status_code=201)
    def create(body: PredictionRequest, prefer: str | None = Header(default=None)) -> Any:
        inp = body.input
        for key, value in (inp.model_extra or {}).items():  # the known inputs refuse them (allow_inf_nan)
            if not _finite(value):  # Python's json reads NaN; the answer, which echoes the input, cannot hold it
                raise invalid(("input", key), "has a number that is not finite (NaN or Infinity); JSON has neither")
        if body.id is not None and body.id in store:
            raise ServeError(409, "id", f"a prediction {body.id!r} exists already")
        pred = Prediction(body.id or uuid.uuid4().hex[:26], inp.model_dump(exclude_unset=True),
                          inp.output_format, inp.output_quality)
        for key in (body.model_extra or {}):
            if key != "version":  # Replicate's model version: this server has one model
                pred.logs.append(f"warning: {key!r} is not supported by loraprompt serve (no webhooks, no streaming);"
                                 " ignored: poll urls.get" if key.startswith(("webhook", "stream"))
                                 else f"warning: {key!r} is not used by loraprompt serve; ignored")
        for key in (inp.model_extra or {}):
            pred.logs.append(f"warning: input {key!r} is not used by loraprompt; ignored" if key not in _QUIET
                             else f"note: input {key!r} does not apply here; ignored")
        try:
            tasks = prepare(service, pred, inp)
        except DownloadFailed as exc:
            pred.status, pred.error, pred.completed_at = "failed", str(exc), time.time()
            pred.logs.append(f"error: {exc}")
            remember(pred)
            return JSONResponse(pred.to_json(), status_code=201)
        job = service.run(tasks, job_id=pred.id)
        pred.job = job
        remember(pred)
        job.on_done(lambda j: finish(pred, j))
        wait = _prefer_wait(prefer)
        if wait is not None:
            job.wait(wait)
        return JSONResponse(pred.to_json(), status_code=201)

    @router.get("/predictions")
    def list_predictions() -> dict[str, Any]:
        return {"results": [p.to_json() for p in reversed(store.values())], "next": None, "previous": None}

    @router.get("/predictions/{prediction_id}")
    def get(prediction_id: str) -> dict[str, Any]:
        pred = store.get(prediction_id)
        if pred is None:
            raise ServeError(404, "prediction_id", f"no prediction {prediction_id!r}")
        return pred.to_json()

    @router.post("/predictions/{prediction_id}/cancel")
    def cancel(prediction_id: str) -> dict[str, Any]:
        pred = store.get(prediction_id)
        if pred is None:
            raise ServeError(404, "prediction_id", f"no prediction {prediction_id!r}")
        if pred.job is not None and not pred.job.done:
            service.backend.cancel(pred.job)
            pred.job.wait(30)
        return pred.to_json()
