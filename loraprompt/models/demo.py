"""The built-in demo: a tiny Stable-Diffusion-1-shaped diffusers pipeline built from config with
fixed-seed random weights and a byte-level CLIP tokenizer built in code. Nothing is downloaded;
the same weights come out on every machine, so its images (noise) are reproducible."""

from __future__ import annotations

from typing import Any

DEMO_SEED = 1234
# Images are 256x256: 32x32 latents through a VAE that downsamples by 8, as SD's does.
DEMO_SIZE = 256
START, END = "<|startoftext|>", "<|endoftext|>"


def byte_unicode_table() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2/CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def demo_vocab() -> dict[str, int]:
    """A CLIP-style vocabulary without merges: every byte, every byte ending a word, two specials."""
    chars = [byte_unicode_table()[b] for b in range(256)]
    tokens = [*chars, *(c + "</w>" for c in chars), START, END]
    return {token: i for i, token in enumerate(tokens)}


def build_demo_tokenizer() -> Any:
    """A real `CLIPTokenizer` over the byte-level demo vocabulary (prompts tokenize per character)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=demo_vocab(), merges=[], model_max_length=77)


def demo_unet_config() -> dict[str, Any]:
    return {
        "sample_size": DEMO_SIZE // 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 2,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    }


def demo_vae_config() -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": DEMO_SIZE,
    }


def demo_text_config(vocab_size: int, start_id: int, end_id: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "bos_token_id": start_id,
        "eos_token_id": end_id,
        "pad_token_id": end_id,
    }


def build_demo_pipeline(seed: int = DEMO_SEED) -> Any:
    """The demo `StableDiffusionPipeline` (float32, CPU), identical for the same `seed`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_demo_tokenizer()
    vocab = demo_vocab()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet: Any = UNet2DConditionModel(**demo_unet_config())
        torch.manual_seed(seed + 1)
        vae: Any = AutoencoderKL(**demo_vae_config())
        torch.manual_seed(seed + 2)
        text_encoder: Any = CLIPTextModel(CLIPTextConfig(**demo_text_config(len(vocab), vocab[START], vocab[END])))
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
