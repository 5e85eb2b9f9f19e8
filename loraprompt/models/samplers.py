"""The samplers the web UI offers, by their A1111 names, as diffusers schedulers built from the
loaded pipeline's own scheduler config (so beta schedule, prediction type and shift are kept).

SD1/SD2/SDXL models list `SAMPLERS`. Flow-matching models (SD3, Flux.1: a
`FlowMatchEulerDiscreteScheduler` config) list `FLOW_SAMPLERS` instead, named as Forge writes them
(`Sampler: Euler, Schedule type: Simple`): the DPM-Solver and UniPC schedulers run on flow sigmas
with the model's shift (or Flux's resolution-dependent shift), and Heun only where the shift is
fixed (the Flux pipeline hands the scheduler explicit sigmas, which diffusers' Heun cannot take)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """A1111's sampler name and schedule type, and the diffusers scheduler that implements it.
    `flow`: it runs a flow-matching model (its options are completed from the model's shift)."""

    name: str
    scheduler: str
    schedule_type: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    flow: bool = False

    @property
    def label(self) -> str:
        """What the UI lists: the name, plus the schedule type when it is not the default."""
        return f"{self.name} {self.schedule_type}" if self.schedule_type else self.name


# Each name's A1111 default schedule comes first among its entries (the API's scheduler "automatic").
SAMPLERS: tuple[Sampler, ...] = (
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("LMS", "LMSDiscreteScheduler"),  # diffusers' LMS integrates its coefficients with scipy
    Sampler("LMS", "LMSDiscreteScheduler", "Karras", {"use_karras_sigmas": True}),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", "Karras", {"use_karras_sigmas": True}),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler"),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", "Exponential",  # A1111 1.10's default for it
            {"use_exponential_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", "Karras",
            {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("UniPC", "UniPCMultistepScheduler"),
)
SAMPLER_LABELS: tuple[str, ...] = tuple(s.label for s in SAMPLERS)

_EULER = "FlowMatchEulerDiscreteScheduler"
FLOW_SAMPLERS: tuple[Sampler, ...] = (
    Sampler("Euler", _EULER, "Simple", flow=True),
    Sampler("Euler", _EULER, "Karras", {"use_karras_sigmas": True}, flow=True),
    Sampler("Euler", _EULER, "Exponential", {"use_exponential_sigmas": True}, flow=True),
    Sampler("Euler", _EULER, "Beta", {"use_beta_sigmas": True}, flow=True),
    Sampler("Heun", "FlowMatchHeunDiscreteScheduler", "Simple", flow=True),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", "Simple", flow=True),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", "Simple", {"algorithm_type": "sde-dpmsolver++"}, flow=True),
    Sampler("UniPC", "UniPCMultistepScheduler", "Simple", flow=True),
)
_FIXED_SHIFT_ONLY = frozenset({"FlowMatchHeunDiscreteScheduler"})


def is_flow_config(base_config: Mapping[str, Any]) -> bool:
    """Whether a scheduler config is a flow-matching model's (SD3, Flux.1, ...)."""
    return str(base_config.get("_class_name", "")).startswith("FlowMatch")


def samplers_for(base_config: Mapping[str, Any] | None) -> tuple[Sampler, ...]:
    """The samplers that fit a model with this scheduler config (None: an SD model's)."""
    if base_config is None or not is_flow_config(base_config):
        return SAMPLERS
    dynamic = bool(base_config.get("use_dynamic_shifting"))
    return tuple(s for s in FLOW_SAMPLERS if not (dynamic and s.scheduler in _FIXED_SHIFT_ONLY))


# A1111 runs any sampler on any schedule type; diffusers' schedulers take these as options (all but
# Euler a and DDIM). The list above is what the web UI offers; the other pairs are reached by label.
SIGMA_OPTIONS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas", "Beta": "use_beta_sigmas"}


@cache
def _takes(scheduler: str, option: str) -> bool:
    import inspect

    import diffusers

    return option in inspect.signature(getattr(diffusers, scheduler).__init__).parameters


def with_schedule(sampler: Sampler, schedule_type: str | None) -> Sampler | None:
    """`sampler` (an SD one) on another of A1111's schedule types: "Karras", "Exponential", "Beta",
    or None for the model's own ("uniform"); None where its diffusers scheduler has no such option."""
    if sampler.flow:
        return None
    options = {k: v for k, v in sampler.options.items() if k not in SIGMA_OPTIONS.values()}
    if schedule_type is not None:
        key = SIGMA_OPTIONS.get(schedule_type)
        if key is None or not _takes(sampler.scheduler, key):
            return None
        options[key] = True
    return Sampler(sampler.name, sampler.scheduler, schedule_type, options)


def schedule_variants(samplers: Sequence[Sampler]) -> list[Sampler]:
    """Each sampler name of `samplers` on every schedule type it can run that is not listed."""
    listed = {s.label for s in samplers}
    firsts = {s.name: s for s in reversed(samplers)}
    found = (with_schedule(firsts[name], kind) for name in dict.fromkeys(s.name for s in samplers)
             for kind in (None, *SIGMA_OPTIONS))
    return [v for v in found if v is not None and v.label not in listed]


def sampler_by_label(label: str, samplers: Sequence[Sampler] = SAMPLERS) -> Sampler:
    """The sampler listed as `label` among `samplers`, or one of their `schedule_variants` ("Euler
    Karras"); ValueError naming the choices otherwise."""
    for sampler in (*samplers, *schedule_variants(samplers)):
        if sampler.label == label:
            return sampler
    others = [s for s in (*SAMPLERS, *FLOW_SAMPLERS) if s.label == label and s not in samplers]
    why = " does not fit the loaded model" if others else ""
    raise ValueError(f"unknown sampler {label!r}{why}; choose one of: {', '.join(s.label for s in samplers)}")


def model_shift(base_config: Mapping[str, Any]) -> float | None:
    """The fixed shift of a flow-matching config (SD3: 3.0); None when the shift follows the image
    size (Flux's dynamic shifting) or the model is not flow-matching."""
    if not is_flow_config(base_config) or base_config.get("use_dynamic_shifting"):
        return None
    return float(base_config.get("shift", 1.0))


def make_scheduler(sampler: Sampler, base_config: Any, shift: float | None = None) -> Any:
    """A fresh scheduler of `sampler`'s class configured from `base_config` (a scheduler config);
    `shift` replaces a flow-matching model's fixed shift."""
    import diffusers

    cls = getattr(diffusers, sampler.scheduler)
    options = dict(sampler.options)
    if sampler.flow:
        fixed = model_shift(base_config)
        value = shift if shift is not None and fixed is not None else fixed
        if sampler.scheduler.startswith("FlowMatch"):
            if value is not None:
                options["shift"] = value
        else:  # DPM-Solver / UniPC on flow sigmas: the same shift, or the same dynamic shifting
            options.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=value or 1.0,
                           use_dynamic_shifting=bool(base_config.get("use_dynamic_shifting")))
    return cls.from_config(base_config, **options)
