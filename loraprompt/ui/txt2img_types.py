"""What a generation is asked for and what it gives back: the request as the web UI, the APIs and
the X/Y grid collect it, and the images with their infotext, applied LoRAs and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.ui.hires import HiresOptions


@dataclass
class Txt2ImgRequest:
    """One generation request as the UI collects it; seed -1 means a random seed.

    With `init_image` (a PIL image or a file path) it is img2img: the image is brought to
    width x height by `resize_mode` and denoised by `denoising_strength`. `hires` adds A1111's
    hires fix to txt2img. `batch_count` batches of `batch_size` images use seeds seed, seed+1, ...
    `sampler` "" is the model's first sampler. `distilled_cfg_scale` is Flux.1-dev's guidance and
    `shift` replaces an SD3 model's timestep shift (None: the model's own)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    sampler: str = ""
    clip_skip: int = 1  # A1111's "Clip skip" (on SDXL: CLIP-L only, as A1111's "sdxl_clip_l_skip")
    batch_count: int = 1
    batch_size: int = 1
    hires: HiresOptions | None = None
    init_image: Any = None
    denoising_strength: float = 0.75
    resize_mode: str = "Just resize"
    distilled_cfg_scale: float = 3.5
    shift: float | None = None


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA that was patched in for a generation: the name as written, its file and strengths."""

    name: str
    path: str
    te: float | None  # None: follows a step schedule
    unet: float | None
    short_hash: str | None


@dataclass
class GeneratedImage:
    """One image of a generation with its own infotext (its own seed); `path` is where it was
    saved (None when the generation was asked not to save)."""

    image: Any
    path: Path | None
    infotext: str
    seed: int


@dataclass
class Txt2ImgResult:
    """What one generation produced and what the user should be told about it. `image`, `path`,
    `infotext` and `seed` are the first image's; `images` has them all, and `grid` (saved at
    `grid_path`) puts them side by side when there is more than one, as A1111 does. Paths are
    None when nothing was saved (`generate(save=False)`)."""

    image: Any
    path: Path | None
    infotext: str
    seed: int
    applied: list[AppliedLora] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    images: list[GeneratedImage] = field(default_factory=list)
    grid: Any = None
    grid_path: Path | None = None
