"""Errors of a training run; each names what to fix (the file, the setting)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraprompt.errors import LoraPromptError

if TYPE_CHECKING:
    from loraprompt.train.config import TrainConfig


class TrainError(LoraPromptError):
    """A training run that cannot start or go on; nothing is written at the output."""


class LossNotFinite(TrainError):
    """A NaN or infinite loss: the state of the last finished step is saved, but a resume keeps the
    recipe (learning rates, precision), so it would stop at the same step again: no resume hint."""


class TrainInterrupted(TrainError):
    """Ctrl-C or a crash mid-run: the state at the last finished step was saved in `state_dir`."""

    def __init__(self, message: str, state_dir: str, step: int) -> None:
        super().__init__(message)
        self.state_dir, self.step = state_dir, step


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the allocator failures CPU and MPS raise as RuntimeError."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "failed to allocate" in text)


def oom_message(config: TrainConfig, resolution: int) -> str:
    """What to lower after running out of memory, from the run's settings."""
    lower = [f"--batch-size (now {config.batch_size})", f"--resolution (now {resolution})"]
    if not config.gradient_checkpointing:
        lower.append("turn on --gradient-checkpointing")
    if config.mixed_precision == "no":
        lower.append("use --mixed-precision bf16 or fp16")
    if config.train_te:
        lower.append("--no-train-te")
    return "out of memory while training; lower " + ", ".join(lower)
