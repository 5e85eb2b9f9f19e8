"""Tiny single-file (A1111 original-layout) checkpoints built from the tiny models, for merge tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from loraprompt.keymaps.unet import to_ldm, up_levels_with_attention
from tests.fixtures.models import SDXL_TEXT_WIDTHS, tiny_openclip_text, tiny_sd1, tiny_sdxl

TE_PREFIX = {"sd1": {"text_encoder": "cond_stage_model.transformer."},
             "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.",
                      "text_encoder_2": "conditioner.embedders.1.model."}}
EXTRA = "first_stage_model.decoder.conv_out.weight"


_OPENCLIP_CHILD = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def openclip_state(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """A transformers CLIPTextModelWithProjection state dict in OpenCLIP names (q/k/v fused)."""
    out = {"token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": hf["text_model.final_layer_norm.weight"],
           "ln_final.bias": hf["text_model.final_layer_norm.bias"],
           "text_projection": hf["text_projection.weight"].t().contiguous()}
    layers = {int(k.split(".")[3]) for k in hf if k.startswith("text_model.encoder.layers.")}
    for n in layers:
        src, dst = f"text_model.encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat([hf[f"{src}self_attn.{p}_proj.{part}"] for p in "qkv"])
            for child, oc in _OPENCLIP_CHILD.items():
                out[f"{dst}{oc}.{part}"] = hf[f"{src}{child}.{part}"]
    return out


def a1111_models(family: str, seed: int = 0) -> dict[str, nn.Module]:
    """The modules A1111 holds: diffusers-equivalent UNet, HF CLIP-L and (SDXL) an OpenCLIP tower
    carrying tiny_sdxl's second text encoder's weights."""
    if family == "sd1":
        return tiny_sd1(seed=seed)
    models = tiny_sdxl(seed=seed)
    hf = models["text_encoder_2"].state_dict()
    tower = tiny_openclip_text(width=SDXL_TEXT_WIDTHS[1], seed=seed)
    for block in tower.transformer.resblocks:
        inner = hf["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        block.mlp.c_fc = nn.Linear(SDXL_TEXT_WIDTHS[1], inner)
        block.mlp.c_proj = nn.Linear(inner, SDXL_TEXT_WIDTHS[1])
    tower.load_state_dict(openclip_state(hf))
    models["text_encoder_2"] = tower
    return models


def single_file_keys(models: dict[str, nn.Module], family: str) -> dict[str, tuple[str, str]]:
    """Single-file key -> (component, the module's own state-dict key)."""
    unet_keys = list(models["unet"].state_dict())
    up_attn = up_levels_with_attention({k.rpartition(".")[0] for k in unet_keys})
    out: dict[str, tuple[str, str]] = {}
    for key in unet_keys:
        module, _, param = key.rpartition(".")
        ldm = to_ldm(module, up_attn)
        assert ldm is not None, key
        out[f"model.diffusion_model.{ldm}.{param}"] = ("unet", key)
    for component, prefix in TE_PREFIX[family].items():
        for key in models[component].state_dict():
            spelled = key if key.startswith("text_model.") or component == "text_encoder_2" else f"text_model.{key}"
            out[prefix + spelled] = (component, key)
    return out


def write_single_file(models: dict[str, nn.Module], family: str, path: Path,
                      dtype: torch.dtype = torch.float32) -> dict[str, tuple[str, str]]:
    """Save the models as one original-layout file (plus one VAE-like tensor); returns the key map."""
    keys = single_file_keys(models, family)
    states = {c: m.state_dict() for c, m in models.items()}
    tensors: dict[str, Tensor] = {k: states[c][own].to(dtype).contiguous() for k, (c, own) in keys.items()}
    tensors[EXTRA] = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(dtype)
    save_file(tensors, str(path), metadata={"modelspec.title": "tiny"})
    return keys
