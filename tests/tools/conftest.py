"""LoRA files written by the real libraries (peft + diffusers), on the tiny models, for the tool tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from tests.fixtures.models import tiny_sd1

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "time_emb_proj"]
TE_TARGETS = ["q_proj", "v_proj", "fc1"]


def peft_lora_models(seed: int, rank: int = 4, alpha: float = 8.0) -> dict[str, torch.nn.Module]:
    """tiny_sd1 components with a peft LoRA adapter whose up (B) factors are random, not zero."""
    models = tiny_sd1(seed=seed)
    models["unet"].add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS,
                                          init_lora_weights=False))
    models["text_encoder"].add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TE_TARGETS,
                                                  init_lora_weights=False))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for model in models.values():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return models


def write_diffusers_lora(folder: Path, seed: int, rank: int = 4, alpha: float = 8.0) -> Path:
    """A LoRA saved by diffusers' save_lora_weights, with lora_adapter_metadata (alpha) for both parts."""
    models = peft_lora_models(seed, rank, alpha)
    meta = {"r": rank, "lora_alpha": alpha}
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(models["unet"]),
        text_encoder_lora_layers=get_peft_model_state_dict(models["text_encoder"]),
        unet_lora_adapter_metadata={**meta, "target_modules": UNET_TARGETS},
        text_encoder_lora_adapter_metadata={**meta, "target_modules": TE_TARGETS},
        weight_name=f"lora_{seed}.safetensors",
    )
    return folder / f"lora_{seed}.safetensors"


def write_kohya_lora(path: Path, seed: int, rank: int = 4, alpha: float = 8.0) -> Path:
    """A kohya LoRA made by diffusers' convert_state_dict_to_kohya from a peft state dict."""
    models = peft_lora_models(seed, rank, alpha)
    peft_sd = {f"unet.{k}": v for k, v in get_peft_model_state_dict(models["unet"]).items()}
    peft_sd |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(models["text_encoder"]).items()}
    kohya = convert_state_dict_to_kohya(peft_sd)
    for key in [k for k in kohya if k.endswith(".lora_down.weight")]:
        kohya[key.replace(".lora_down.weight", ".alpha")] = torch.tensor(alpha)
    kohya = {k.replace("lora_te1_encoder_", "lora_te_text_model_encoder_"): v.contiguous() for k, v in kohya.items()}
    save_file(kohya, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    return path


@pytest.fixture
def kohya_file(tmp_path: Path) -> Path:
    return write_kohya_lora(tmp_path / "kohya.safetensors", seed=1)


@pytest.fixture
def diffusers_file(tmp_path: Path) -> Path:
    return write_diffusers_lora(tmp_path, seed=2)


@pytest.fixture(scope="session")
def sd1_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only inputs shared by the merge tests: a tiny SD1 single-file checkpoint and a kohya
    LoRA for it (the tools never write over an input; copy before changing one)."""
    from tests.fixtures.loras import write_kohya_lora as tool_kohya
    from tests.tools.checkpoints import a1111_models, write_single_file

    root = tmp_path_factory.mktemp("sd1_inputs")
    write_single_file(a1111_models("sd1"), "sd1", root / "model.safetensors")
    return {"checkpoint": root / "model.safetensors",
            "lora": tool_kohya("sd1", root / "a.safetensors", seed=3).path}
