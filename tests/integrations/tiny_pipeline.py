"""A tiny StableDiffusionPipeline built from config (no downloads) and a kohya LoRA writer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTokenizer

from tests.fixtures.models import tiny_sd1


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over a-z with two merges, written into `folder`."""
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for suffix in ("", "</w>"):
        for letter in "abcdefghijklmnopqrstuvwxyz":
            vocab[letter + suffix] = len(vocab)
    vocab["ca"], vocab["cat</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=77)


def tiny_pipeline(folder: Path, seed: int = 0) -> StableDiffusionPipeline:
    """SD1-shaped pipeline generating 16x16 images."""
    models = tiny_sd1(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=16,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=models["text_encoder"], tokenizer=tiny_tokenizer(folder), unet=models["unet"],
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: StableDiffusionPipeline, prompt: str, steps: int = 3):
    """A deterministic 16x16 image as a numpy array."""
    return pipe(prompt, num_inference_steps=steps, height=16, width=16, output_type="np",
                generator=torch.manual_seed(0)).images


def write_kohya_lora(path: Path, components: dict[str, nn.Module], seed: int, rank: int = 2) -> Path:
    """A kohya-format LoRA (lora_up/lora_down/alpha) on every Linear and 1x1 conv of the UNet's
    transformer blocks and the text encoder's attention and MLP, named the way kohya names them."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    prefixes = {"unet": ("lora_unet_", ""), "text_encoder": ("lora_te_", "text_model_")}
    for component, module in components.items():
        prefix, inner = prefixes[component]
        for name, child in module.named_modules():
            conv1 = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)
            if not (isinstance(child, nn.Linear) or conv1):
                continue
            if component == "text_encoder" and not any(p in name for p in ("self_attn", "mlp")):
                continue
            if component == "unet" and ".attentions." not in name:
                continue  # kohya's networks.lora: the transformer blocks only
            key = prefix + inner + name.replace(".", "_")
            out_f, in_f = child.weight.shape[:2]
            up = torch.randn(out_f, rank, generator=gen) * 0.3
            down = torch.randn(rank, in_f, generator=gen) * 0.3
            if conv1:
                up, down = up[..., None, None], down[..., None, None]
            tensors[f"{key}.lora_up.weight"] = up.contiguous()
            tensors[f"{key}.lora_down.weight"] = down.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path
