"""A training run's saved state: `<stem>.train-state/state.pt` (the LoRA weights, pivotal vectors,
optimizer moments, loss history, settings and captions at a step), which `--resume` continues from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loraprompt.adapters.loading import pickle_refusal
from loraprompt.train.errors import TrainError

STATE_FILE = "state.pt"
STATE_VERSION = 1


def default_state_dir(output: str | Path) -> Path:
    out = Path(output)
    return out.with_name(f"{out.stem}.train-state")


def read_state(state_dir: str | Path) -> dict[str, Any]:
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        raise TrainError(f"{state_dir}: no training state ({STATE_FILE}) to resume from")
    if (refusal := pickle_refusal()) is not None:  # a planted state.pt would run code there
        raise TrainError(f"{path}: {refusal}; resume with torch >= 2.6")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"{path}: cannot read the training state ({exc})") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise TrainError(f"{path}: not a loraprompt training state (version {STATE_VERSION})")
    return state
