"""Errors of a training run; each names what to fix (the file, the setting)."""

from __future__ import annotations

from loraprompt.errors import LoraPromptError


class TrainError(LoraPromptError):
    """A training run that cannot start or go on; nothing is written at the output."""


class TrainInterrupted(TrainError):
    """Ctrl-C or a crash mid-run: the state at the last finished step was saved in `state_dir`."""

    def __init__(self, message: str, state_dir: str, step: int) -> None:
        super().__init__(message)
        self.state_dir, self.step = state_dir, step
