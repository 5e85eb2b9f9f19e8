"""Sampling progress over every batch and pass of a generation, and the NaN watch.

A step whose latents are not finite (fp16 overflow, a broken LoRA or model, a text encoder whose
output lost its scale) decodes to a black or broken image without a word; A1111 checks the
UNet's output at each step for the same reason ("A tensor with all NaNs was produced in Unet").
Here the latents the pipeline hands to its step-end callback are checked until one is bad, and
the generation's diagnostics say at which step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loraprompt.diagnostics import Diagnostic

StepCallback = Callable[[int, int], None]


class Progress:
    """Sampling steps done over every batch and pass, reported as (done, total)."""

    def __init__(self, total: int, on_step: StepCallback | None) -> None:
        self.total, self.done, self.on_step = total, 0, on_step
        self.nan_step: int | None = None  # the first step (counted over the generation) with non-finite latents

    def step(self, latents: Any = None) -> None:
        self.done += 1
        if latents is not None and self.nan_step is None:
            import torch

            if not bool(torch.isfinite(latents).all()):  # one reduction and one sync per step, as A1111's check
                self.nan_step = self.done
        if self.on_step is not None:
            self.on_step(self.done, self.total)

    def skip_to(self, done: int) -> None:
        """Count the steps up to `done` as done, reported once: the steps a Skip left out, so that
        the bar moves on to the next batch as A1111's moves on to the next job."""
        if done > self.done:
            self.done = min(done, self.total)
            if self.on_step is not None:
                self.on_step(self.done, self.total)

    def diagnostic(self) -> Diagnostic | None:
        """A warning when a step produced NaN or infinite values, else None."""
        if self.nan_step is None:
            return None
        return Diagnostic(
            "W-NAN", f"step {self.nan_step} of {self.total} produced NaN or infinite values, so the image is black or "
            "broken: lower the LoRA strengths or try without a LoRA to find the cause (on a GPU in fp16, bf16 or fp32 "
            "may help)", data={"step": self.nan_step})
