"""Errors of a training run; each names what to fix (the file, the setting)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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


@contextlib.contextmanager
def _signal_handlers(handlers: dict[signal.Signals, Any]) -> Iterator[None]:
    """`handlers` installed meanwhile and the previous ones put back afterwards; only in the main
    thread, where Python runs signal handlers (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def sigterm_interrupts() -> contextlib.AbstractContextManager[None]:
    """SIGTERM raises KeyboardInterrupt("SIGTERM") meanwhile, so that a run stopped by a container,
    `kill` or a scheduler's time limit saves its state as Ctrl-C does (SIGTERM's default kills the
    process at once). Only in the main thread; the previous handler is put back afterwards."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    return _signal_handlers({signal.SIGTERM: interrupt})


def signals_held() -> contextlib.AbstractContextManager[None]:
    """Ctrl-C and SIGTERM are ignored meanwhile (main thread only): a run saving its state after an
    interruption finishes that save instead of being broken off by the user pressing Ctrl-C again."""
    return _signal_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})
