"""The files a training run leaves: the LoRA (kohya keys with alpha, or PEFT), kohya's `ss_*` and
the `modelspec.*` metadata that A1111, Civitai and galleries read, the pivotal token bundled as A1111
v1.10 reads it (`bundle_emb.<token>.string_to_param.*`, or `.clip_l`/`.clip_g` on SDXL), the
`<stem>.json` user metadata with the token as activation text, and `<stem>.preview.png`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from loraprompt.library.sidecars import atomic_write_text
from loraprompt.tools.io import RECIPE_KEY, atomic_path, save_tensors
from loraprompt.tools.writer import kohya_tensors, peft_tensors
from loraprompt.train.config import TrainConfig

BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURE = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base"}
SD_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def bundle_tensors(token: str, vectors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A1111 v1.10's bundled-embedding keys for one token learned in each text encoder."""
    if "text_encoder_2" in vectors:
        return {f"bundle_emb.{token}.clip_l": vectors["text_encoder"].contiguous(),
                f"bundle_emb.{token}.clip_g": vectors["text_encoder_2"].contiguous()}
    return {f"bundle_emb.{token}.string_to_param.*": vectors["text_encoder"].contiguous()}


def checkpoint_hashes(checkpoint: str) -> tuple[str, str]:
    """(legacy, sha256) of a single-file base, as sd-scripts writes them in ss_sd_model_hash and
    ss_new_sd_model_hash: A1111's old 8-digit model hash (of the 64 KiB at 1 MiB) and the whole
    file's sha256 (cached: loading the checkpoint computed it). ("", "") for the demo model, a
    diffusers folder, or a file that can no longer be read (the LoRA is written all the same)."""
    import hashlib

    from loraprompt.errors import LoraPromptError
    from loraprompt.library.hashes import file_hashes

    path = Path(checkpoint)
    if checkpoint == "demo" or not path.is_file():
        return "", ""
    try:
        full = file_hashes(path)["sha256"] or ""
        with open(path, "rb") as f:
            f.seek(0x100000)
            legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except (LoraPromptError, OSError):
        return "", ""
    return legacy, full


def metadata(config: TrainConfig, *, family: str, base_name: str, dataset: Any,
             started: float, finished: float, steps: int, resolution: int, prediction_type: str,
             folder_name: str) -> dict[str, str]:
    """kohya `ss_*` (as sd-scripts writes them, values as strings) and SAI `modelspec.*`."""
    out_name = Path(config.output).stem
    when = dt.datetime.fromtimestamp(finished, dt.timezone.utc)
    n_images = len(dataset.images)
    subsets = dataset.subsets(folder_name)
    per_epoch = sum(repeats * count for repeats, count in subsets.values())  # sd-scripts counts each repeat
    batches_per_epoch = max(1, -(-per_epoch // config.batch_size))
    legacy_hash, sha256 = checkpoint_hashes(config.checkpoint)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.network_alpha),
        "ss_network_args": json.dumps({"ff": config.ff}) if config.ff else "null",
        "ss_base_model_version": BASE_VERSION[family],
        "ss_v2": str(family == "sd2"),
        # as sd-scripts: the path's basename when it exists (with its extension), else `base_name`
        "ss_sd_model_name": Path(config.checkpoint).name if config.checkpoint != "demo" and Path(config.checkpoint).exists()
        else base_name,
        "ss_sd_model_hash": legacy_hash,
        "ss_new_sd_model_hash": sha256,
        "ss_output_name": out_name,
        "ss_num_train_images": str(per_epoch),
        "ss_num_reg_images": "0",
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": "True",
        "ss_max_train_steps": str(config.steps),
        "ss_steps": str(steps),
        "ss_epoch": str(-(-steps // batches_per_epoch)),
        "ss_num_epochs": str(-(-config.steps // batches_per_epoch)),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_learning_rate": str(config.lr),
        "ss_unet_lr": str(config.lr),
        "ss_text_encoder_lr": str(config.lr_te if config.train_te else 0.0),
        "ss_network_train_unet_only": str(not config.train_te),
        "ss_seed": str(config.seed),
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_min_snr_gamma": str(config.min_snr_gamma) if config.min_snr_gamma else "None",
        "ss_noise_offset": str(config.noise_offset) if config.noise_offset else "None",
        "ss_flip_aug": str(config.do_flip),
        "ss_optimizer": "torch.optim.AdamW",
        "ss_lr_scheduler": "constant",
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(finished),
        "ss_training_comment": f"trained with loraprompt ({config.task}); activation text: {config.token}",
        "ss_tag_frequency": json.dumps(dataset.subset_tags(folder_name)),
        "ss_dataset_dirs": json.dumps({name: {"n_repeats": repeats, "img_count": count}
                                       for name, (repeats, count) in subsets.items()}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ("stable-diffusion-v2-768-v" if family == "sd2" and prediction_type == "v_prediction"
                                   else ARCHITECTURE[family]) + "/lora",  # as sd-scripts' sai_model_spec
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if family == "sdxl"
                                    else "diffusers",
        "modelspec.title": out_name,
        "modelspec.date": when.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": config.token,
        "modelspec.description": f"LoRA trained by loraprompt on {n_images} images ({config.task})",
    }
    if config.pivotal:
        meta["ss_embeddings"] = json.dumps([config.token])
    # the file gets shared: the base by its file name, as sd-scripts does, not the user's path
    recipe = {**config.recipe(), "checkpoint": Path(config.checkpoint).name, "steps": steps}
    meta[RECIPE_KEY] = json.dumps({"tool": "train", **recipe}, sort_keys=True, default=str)
    return meta


def write_lora_file(path: Path, factors: list[Any], fmt: str, meta: dict[str, str],
                    bundle: dict[str, Tensor] | None, *, family: str | None = None) -> None:
    """The LoRA file, atomically (a temporary file renamed onto `path` only when complete). The
    model's `family` names kohya's text-encoder prefix: `lora_te1_` on SDXL even when only CLIP-L
    was trained (A1111 maps no `lora_te_` there)."""
    if fmt == "kohya":
        tensors = kohya_tensors(factors, family)
        extra: dict[str, str] = {}
    else:
        tensors, extra = peft_tensors(factors)
    tensors = {k: v.to(torch.float16) if v.is_floating_point() and v.dim() else v for k, v in tensors.items()}
    tensors.update({k: v.float() for k, v in (bundle or {}).items()})
    save_tensors(path, tensors, {**meta, **extra})


def user_metadata(config: TrainConfig, family: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """A1111's `<stem>.json` (the card's user metadata) with the token as activation text."""
    return {
        "description": f"Trained by loraprompt from {recipe['images']} images ({config.task}).",
        "sd version": SD_VERSION[family],
        "activation text": config.token,
        "preferred weight": 1.0 if config.task != "style" else 0.8,
        "negative text": "",
        "notes": f"loraprompt train: {recipe['steps']} steps, rank {config.rank}, alpha {config.network_alpha},"
                 f" lr {config.lr}" + (f", TE lr {config.lr_te}" if config.train_te else ", UNet only")
                 + (", pivotal token" if config.pivotal else ""),
        "loraprompt_train": recipe,
    }


def outputs(lora: Path) -> tuple[Path, Path, Path]:
    """What a run writes: the LoRA file, and A1111's card `.json` and `.preview.png` beside it."""
    return lora, lora.with_suffix(".json"), lora.with_name(f"{lora.stem}.preview.png")


def write_json(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(doc, indent=4, ensure_ascii=False))


def write_png(path: Path, image: Any) -> None:
    with atomic_path(path, ".png") as tmp:
        image.save(tmp, format="PNG")


def folder_name(images: Path) -> str:
    """The dataset's name in ss_tag_frequency / ss_dataset_dirs: a zip's stem, a folder's whole name."""
    if images.suffix.lower() == ".zip" and not images.is_dir():
        return images.stem or "images"
    return images.resolve().name or "images"
