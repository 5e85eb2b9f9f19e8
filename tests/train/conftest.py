"""Tiny SD1 and SDXL pipelines (VAE, tokenizers and all) built from config, and small image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline
from PIL import Image

from loraprompt.train.model import Base
from tests.fixtures.models import tiny_sdxl
from tests.fixtures.threads import one_torch_thread
from tests.integrations.tiny_pipeline import tiny_pipeline, tiny_tokenizer

__all__ = ["one_torch_thread"]


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         sample_size=32)


def sd1_base(folder: Path) -> Base:
    """The tiny SD1 pipeline of the integration tests (VAE /2, UNet /8: 32 px images train on 16² latents)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Base(tiny_pipeline(folder), "sd1", "tiny-sd1")


def sdxl_base(folder: Path) -> Base:
    folder.mkdir(parents=True, exist_ok=True)
    models = tiny_sdxl()
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=models["text_encoder"], text_encoder_2=models["text_encoder_2"],
        tokenizer=tiny_tokenizer(folder), tokenizer_2=tiny_tokenizer(folder), unet=models["unet"],
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1),
    )
    pipe.set_progress_bar_config(disable=True)
    return Base(pipe, "sdxl", "tiny-sdxl")


def write_images(folder: Path, count: int = 3, size: tuple[int, int] = (40, 32), seed: int = 0) -> Path:
    """`count` PNGs with a bold coloured pattern (something a LoRA can learn), one with a caption file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = size
        a = np.zeros((h, w, 3), np.uint8)
        a[..., i % 3] = 220
        a[h // 4: h // 2, :] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
    (folder / "img0.txt").write_text("a photo of {token}, red stripes\n")
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return write_images(tmp_path / "images")


def denoising_loss(base: Base, folder: Path, caption: str, resolution: int = 32, seed: int = 123) -> float:
    """The epsilon loss of `base`'s UNet on the images of `folder` with fixed noise and timesteps."""
    from loraprompt.train.data import load_dataset
    from loraprompt.train.model import encode
    from loraprompt.train.trainer import _to_tensor

    pipe = base.pipe
    data = load_dataset(folder, resolution=resolution, step=16, template=caption, token="<s1>", require_token=False)
    gen = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    with torch.no_grad():
        for item in data.images:
            latents = pipe.vae.encode(_to_tensor(item.image)[None]).latent_dist.mean * pipe.vae.config.scaling_factor
            enc = encode(base, [caption], torch.device("cpu"))
            for t in (100, 300, 500, 700, 900):
                noise = torch.randn(latents.shape, generator=gen)
                timesteps = torch.tensor([t])
                noisy = pipe.scheduler.add_noise(latents, noise, timesteps)
                extra: dict[str, Any] = {}
                if base.family == "sdxl":
                    (oh, ow), (top, left), (th, tw) = item.original_size, item.crop_top_left, item.size
                    extra["added_cond_kwargs"] = {"text_embeds": enc.pooled,
                                                  "time_ids": torch.tensor([[oh, ow, top, left, th, tw]], dtype=torch.float32)}
                pred = pipe.unet(noisy, timesteps, enc.states, **extra).sample
                total += float(torch.nn.functional.mse_loss(pred, noise))
                n += 1
    return total / n


def default_init(base: Base, seed: int = 0) -> Base:
    """Re-initialise the UNet with diffusers' own initialisation (the shared fixtures scale every
    weight to 0.1·N(0, 1), which mutes the attention path a LoRA trains)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**base.pipe.unet.config).eval()
    base.pipe.unet = unet
    return base
