"""Tiny SD1/SD2/SDXL models from (shrunk) shipped configs, written as single-file checkpoints in the
original LDM/SGM layout (what Automatic1111 loads and Civitai serves), for the loading tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from loraprompt.keymaps.unet import to_ldm
from loraprompt.models.checkpoint import family_config
from loraprompt.models.demo import demo_text_config, demo_unet_config, demo_vae_config

VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(key: str, up_with_attention: set[int]) -> str:
    module, param = key.rsplit(".", 1)
    ldm = to_ldm(module, up_with_attention)
    if ldm is None:
        raise KeyError(f"no LDM name for UNet tensor {key}")
    return f"model.diffusion_model.{ldm}.{param}"


def _vae_key(key: str, levels: int) -> str:
    """The LDM name of a diffusers AutoencoderKL tensor."""
    for pattern, repl in (
        (r"^(encoder|decoder)\.conv_norm_out\.", lambda m: f"{m[1]}.norm_out."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
    ):
        key = re.sub(pattern, repl, key)
    for table in (VAE_RESNET, VAE_ATTENTION):
        for src, dst in table.items():
            key = key.replace(f".{src}.", f".{dst}.")
    return f"first_stage_model.{key}"


def _clip_key(key: str) -> str:
    # transformers 5 dropped the `text_model.` level from CLIPTextModel; checkpoints carry it.
    return "cond_stage_model.transformer." + (key if key.startswith("text_model.") else f"text_model.{key}")


def _text_model_keys(module: Any) -> dict[str, torch.Tensor]:
    return {(k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
            for k, v in module.state_dict().items()}


def openclip_state_dict(text_encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text tower under OpenCLIP names (fused q/k/v, `resblocks`), as SD2 and
    SDXL checkpoints store their OpenCLIP encoders."""
    sd = _text_model_keys(text_encoder)
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{part}"] for p in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{b}.{part}"] = sd[f"{src}{a}.{part}"]
    return {prefix + k: v for k, v in out.items()}


def ldm_state_dict(pipe: Any, openclip_text: bool = False) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder(s) under LDM/SGM names (VAE attention as 1x1
    convs; SDXL's second encoder, and SD2's only one when `openclip_text`, in OpenCLIP layout)."""
    out: dict[str, torch.Tensor] = {}
    unet = pipe.unet.state_dict()
    up_with_attention = {int(k.split(".")[1]) for k in unet if k.startswith("up_blocks.") and ".attentions." in k}
    for key, value in unet.items():
        out[_unet_key(key, up_with_attention)] = value
    levels = len(pipe.vae.config.block_out_channels)
    for key, value in pipe.vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".attn_1." in name and name.endswith(".weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out[name] = value
    if openclip_text:
        out.update(openclip_state_dict(pipe.text_encoder, "cond_stage_model.model."))
    elif getattr(pipe, "text_encoder_2", None) is None:
        for key, value in pipe.text_encoder.state_dict().items():
            out[_clip_key(key)] = value
    else:
        for key, value in _text_model_keys(pipe.text_encoder).items():
            out[f"conditioner.embedders.0.transformer.{key}"] = value
        out.update(openclip_state_dict(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def write_ldm_checkpoint(pipe: Any, path: Path, openclip_text: bool = False) -> Path:
    """Save `pipe` as one LDM-layout `.safetensors` file."""
    save_file(ldm_state_dict(pipe, openclip_text), str(path))
    return path


def tiny_sdxl_configs() -> dict[str, Any]:
    """The shipped SDXL configs with tiny sizes (CLIP-L-like width 32, bigG-like width 48)."""
    cfg = family_config("sdxl")
    text = {k: v for k, v in demo_text_config(49408, 49406, 49407).items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
    unet = {**cfg["unet"], "block_out_channels": [32, 64, 64], "norm_num_groups": 16, "attention_head_dim": [2, 4, 4],
            "transformer_layers_per_block": [1, 1, 2], "cross_attention_dim": 32 + 48, "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 48 + 6 * 8, "addition_embed_type_num_heads": 8, "sample_size": 32}
    return {**cfg, "unet": unet, "vae": {**cfg["vae"], **demo_vae_config()},
            "text_encoder": {**cfg["text_encoder"], **text},
            "text_encoder_2": {**cfg["text_encoder_2"], **text, "hidden_size": 48, "intermediate_size": 96,
                               "projection_dim": 48}}


def tiny_sd2_configs() -> dict[str, Any]:
    """The shipped SD2 configs with tiny sizes (an OpenCLIP-H-like gelu text tower of width 48)."""
    cfg = family_config("sd2")
    text = {k: v for k, v in demo_text_config(49408, 49406, 49407).items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {**cfg, "unet": {**cfg["unet"], **demo_unet_config(), "cross_attention_dim": 48, "attention_head_dim": [2, 4, 4, 4],
                            "use_linear_projection": True},
            "vae": {**cfg["vae"], **demo_vae_config()},
            "text_encoder": {**cfg["text_encoder"], **text, "hidden_size": 48, "intermediate_size": 96, "projection_dim": 48}}


def components_from_configs(configs: dict[str, Any]) -> Any:
    """Random-weight components built from `configs` (what a trainer would have saved)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(key: str, cls: Any) -> Any:
        return cls(CLIPTextConfig(**{k: v for k, v in configs[key].items() if k != "architectures"})).eval()

    torch.manual_seed(9)
    source = type("Pipe", (), {})()
    source.unet = UNet2DConditionModel.from_config(configs["unet"]).eval()
    source.vae = AutoencoderKL.from_config(configs["vae"]).eval()
    source.text_encoder = text("text_encoder", CLIPTextModel)
    if "text_encoder_2" in configs:
        source.text_encoder_2 = text("text_encoder_2", CLIPTextModelWithProjection)
    return source
