"""What a training run does: one dataclass, the recipe saved in the state and the output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from loraprompt.train.errors import TrainError

TASKS = ("face", "object", "style")
FORMATS = ("kohya", "peft")
PRECISIONS = ("no", "fp16", "bf16")
# cloneofsimo/lora and Replicate's trainer: the caption template and the word a pivotal token
# starts from, per task; faces and objects are not flipped (asymmetric features), styles are.
TASK_TEMPLATES = {"face": "a photo of {token}", "object": "a photo of {token}", "style": "an image in the style of {token}"}
TASK_INIT_WORDS = {"face": "person", "object": "object", "style": "style"}
TASK_FLIP = {"face": False, "object": False, "style": True}
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
UNET_FF_TARGETS = ("ff.net.0.proj", "ff.net.2")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# settings that change the trained weights: a resumed run must use the saved values
RECIPE_FIELDS = ("checkpoint", "rank", "alpha", "lr", "lr_te", "lr_token", "train_te", "resolution", "batch_size", "seed",
                 "mixed_precision", "task", "token", "init_word", "pivotal", "caption_template", "flip", "ff",
                 "min_snr_gamma", "noise_offset", "prediction_type")


@dataclass
class TrainConfig:
    images: str = ""
    output: str = ""
    checkpoint: str = "demo"
    steps: int = 500
    rank: int = 16
    alpha: float | None = None  # None: alpha = rank
    lr: float = 1e-4
    lr_te: float = 5e-5
    lr_token: float = 5e-4  # the pivotal token's embedding (textual inversion learns at a higher rate)
    train_te: bool = True
    resolution: int | None = None  # None: the model's native size (512 SD1, 768 SD2-v, 1024 SDXL, 256 demo)
    batch_size: int = 1
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    task: str = "object"
    token: str = "<s1>"
    init_word: str | None = None  # None: the task's word
    pivotal: bool = False
    caption_template: str | None = None  # None: the task's template
    flip: bool | None = None  # None: the task's default
    ff: bool = False  # also train the UNet's feed-forward layers
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    prediction_type: str | None = None  # None: from the scheduler config
    sample_every: int = 0
    sample_prompt: str | None = None  # None: the caption template
    sample_steps: int = 20
    save_every: int = 0
    resume: str | None = None
    state_dir: str | None = None  # None: <output stem>.train-state beside the output
    format: str = "kohya"
    force: bool = False
    max_zip_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise TrainError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.format not in FORMATS:
            raise TrainError(f"--format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        if self.mixed_precision not in PRECISIONS:
            raise TrainError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}, not {self.mixed_precision!r}")
        for name in ("steps", "rank", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("sample_every", "save_every"):
            if int(getattr(self, name)) < 0:
                raise TrainError(f"--{name.replace('_', '-')} must be 0 or more (0: off), got {getattr(self, name)}")
        if int(self.sample_steps) < 1:
            raise TrainError(f"--sample-steps must be at least 1, got {self.sample_steps}")
        for name in ("lr", "lr_te", "lr_token", "alpha", "min_snr_gamma", "noise_offset"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):  # inf or nan: a NaN loss at once
                raise TrainError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.min_snr_gamma is not None and self.min_snr_gamma < 0:
            raise TrainError(f"--min-snr-gamma must be > 0 (5 is usual; 0 or unset: off), got {self.min_snr_gamma}")
        if self.lr_token < 0:
            raise TrainError(f"--lr-token must be >= 0, got {self.lr_token}")
        if self.alpha is not None and not self.alpha > 0:
            raise TrainError(f"--alpha must be > 0 (it scales the LoRA by alpha/rank), got {self.alpha}")
        if self.resolution is not None and self.resolution < 32:
            raise TrainError(f"--resolution must be at least 32, got {self.resolution}")
        if self.resolution is not None and self.resolution % 8:  # the pipelines sample only at multiples of 8
            low = self.resolution // 8 * 8
            raise TrainError(f"--resolution {self.resolution}: must be a multiple of 8 ({low} or {low + 8})")
        if not (self.lr > 0 and self.lr_te >= 0):
            raise TrainError("--lr must be > 0 and --lr-te >= 0")
        if not self.token.strip():  # the card's activation text and every caption's {token}: an empty trigger
            raise TrainError(f"--token {self.token!r}: the trigger word must not be empty (default <s1>)")
        if self.pivotal and (" " in self.token or "," in self.token or "." in self.token):
            raise TrainError(f"--token {self.token!r}: a pivotal token is one word (no spaces, commas or dots)")
        if self.format == "peft" and self.pivotal:
            raise TrainError("--pivotal saves the embedding as A1111 bundles it (bundle_emb.*): use --format kohya")

    @property
    def template(self) -> str:
        return self.caption_template if self.caption_template is not None else TASK_TEMPLATES[self.task]

    @property
    def word(self) -> str:
        return self.init_word or TASK_INIT_WORDS[self.task]

    @property
    def do_flip(self) -> bool:
        return TASK_FLIP[self.task] if self.flip is None else self.flip

    @property
    def network_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def recipe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RECIPE_FIELDS}
