"""The samplers the web UI offers, by their A1111 names, as diffusers schedulers built from the
loaded pipeline's own scheduler config (so beta schedule and prediction type are kept)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """A1111's sampler name and schedule type, and the diffusers scheduler that implements it."""

    name: str
    scheduler: str
    schedule_type: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What the UI lists: the name, plus the schedule type when it is not the default."""
        return f"{self.name} {self.schedule_type}" if self.schedule_type else self.name


SAMPLERS: tuple[Sampler, ...] = (
    Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("LMS", "LMSDiscreteScheduler"),  # diffusers' LMS integrates its coefficients with scipy
    Sampler("LMS", "LMSDiscreteScheduler", "Karras", {"use_karras_sigmas": True}),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", "Karras", {"use_karras_sigmas": True}),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler"),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", "Karras",
            {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    Sampler("Heun", "HeunDiscreteScheduler"),
    Sampler("DDIM", "DDIMScheduler"),
    Sampler("UniPC", "UniPCMultistepScheduler"),
)
SAMPLER_LABELS: tuple[str, ...] = tuple(s.label for s in SAMPLERS)


def sampler_by_label(label: str) -> Sampler:
    """The sampler the UI lists as `label`; ValueError naming the choices otherwise."""
    for sampler in SAMPLERS:
        if sampler.label == label:
            return sampler
    raise ValueError(f"unknown sampler {label!r}; choose one of: {', '.join(SAMPLER_LABELS)}")


def make_scheduler(sampler: Sampler, base_config: Any) -> Any:
    """A fresh scheduler of `sampler`'s class configured from `base_config` (a scheduler config)."""
    import diffusers

    cls = getattr(diffusers, sampler.scheduler)
    return cls.from_config(base_config, **sampler.options)
