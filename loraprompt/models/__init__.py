"""Offline model loading for the web UI: the built-in demo, or a local checkpoint (single-file
SD1.x/SD2.x/SDXL, or a diffusers folder of those, SD3/SD3.5 or Flux.1), never anything from a hub."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    """A pipeline ready for txt2img and what the UI and infotext say about it."""

    pipe: Any
    family: str  # "sd1", "sd2", "sdxl", "sd3" or "flux": what the gallery's base-model filter compares with
    name: str
    model_hash: str | None = None  # AutoV2 (first 10 hex of the file's sha256) for single files
    is_demo: bool = False
    source: str | None = None  # the checkpoint file or folder it was loaded from (what training starts from)


def default_data_dir() -> Path:
    """Where the demo keeps its LoRA folder and outputs: $LORAPROMPT_HOME or ~/.cache/loraprompt/demo."""
    env = os.environ.get("LORAPROMPT_HOME")
    return Path(env) if env else Path.home() / ".cache" / "loraprompt" / "demo"


def load_demo(data_dir: str | Path | None = None) -> tuple[LoadedModel, Path]:
    """Build the demo pipeline and make sure its LoRAs exist; returns (model, its LoRA folder)."""
    from loraprompt.models.demo import build_demo_pipeline
    from loraprompt.models.demo_loras import write_demo_loras

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    lora_dir = root / "models" / "Lora"
    pipe = build_demo_pipeline()
    write_demo_loras(pipe, lora_dir)
    return LoadedModel(pipe=pipe, family="sd1", name="loraprompt-demo", is_demo=True), lora_dir


def load_model(checkpoint: str | Path, prediction_type: str | None = None) -> LoadedModel:
    """Load a local checkpoint fully offline (see `loraprompt.models.checkpoint`)."""
    from loraprompt.models.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint, prediction_type)
    model.source = str(Path(checkpoint).expanduser())
    return model
