"""Train a LoRA from a few images on diffusers + peft + accelerate (no UI import here; the web UI's
Train tab and `loraprompt train` both call `train`).

    from loraprompt.train import TrainConfig, train
    result = train(TrainConfig(images="photos/", output="me.safetensors", checkpoint="demo", steps=50))
"""

from __future__ import annotations

from loraprompt.train.config import TrainConfig
from loraprompt.train.errors import TrainError, TrainInterrupted
from loraprompt.train.state import default_state_dir, read_state
from loraprompt.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainError", "TrainInterrupted", "TrainResult", "Trainer", "default_state_dir",
           "read_state", "train"]
