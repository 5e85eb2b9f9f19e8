"""A tiny SD1-shaped model laid out as A1111 holds it: `model.diffusion_model` with LDM module names,
`cond_stage_model` (the hijack wrapper) -> `.wrapped` (FrozenCLIPEmbedder) -> `.transformer`, a
CLIPTextModel with transformers 4's `text_model.` level. Widths are tiny; names are the real ones."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

CONTEXT = 16


class Attention(nn.Module):
    def __init__(self, width: int, context: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context, width, bias=False)
        self.to_v = nn.Linear(context, width, bias=False)
        self.to_out = nn.Sequential(nn.Linear(width, width), nn.Dropout(0.0))


class GEGLU(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 8 * width)


class FeedForward(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(width), nn.Dropout(0.0), nn.Linear(4 * width, width))


class BasicTransformerBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn1 = Attention(width, width)
        self.ff = FeedForward(width)
        self.attn2 = Attention(width, CONTEXT)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)


class SpatialTransformer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, width)
        self.proj_in = nn.Conv2d(width, width, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(width)])
        self.proj_out = nn.Conv2d(width, width, 1)


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(4, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(4 * width, width))
        self.out_layers = nn.Sequential(nn.GroupNorm(4, width), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(width, width, 3, padding=1))
        self.skip_connection = nn.Identity()


class UNetModel(nn.Module):
    """input_blocks 0-1, middle_block and out of SD1's LDM UNet (channels 8)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, 4 * width))
        self.input_blocks = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(4, width, 3, padding=1)), nn.Sequential(ResBlock(width), SpatialTransformer(width))]
        )
        self.middle_block = nn.Sequential(ResBlock(width), SpatialTransformer(width), ResBlock(width))
        self.out = nn.Sequential(nn.GroupNorm(4, width), nn.SiLU(), nn.Conv2d(width, 4, 3, padding=1))


class HF4TextModel(nn.Module):
    """transformers 4's CLIPTextModel naming (`text_model.encoder…`) around a transformers 5 one."""

    def __init__(self) -> None:
        super().__init__()
        config = CLIPTextConfig(
            hidden_size=CONTEXT, intermediate_size=2 * CONTEXT, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=100, max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        )
        self.text_model = CLIPTextModel(config)


class FrozenCLIPEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer = HF4TextModel()


class FrozenCLIPEmbedderWithCustomWords(nn.Module):
    """A1111's hijack wrapper: the real embedder is `.wrapped`."""

    def __init__(self) -> None:
        super().__init__()
        self.wrapped = FrozenCLIPEmbedder()


class DiffusionWrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.diffusion_model = UNetModel()


class TinySD1(nn.Module):
    """What A1111 calls `sd_model` for an SD1.x checkpoint (the parts loraprompt touches)."""

    is_sd1, is_sd2, is_sdxl = True, False, False

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.model = DiffusionWrapper()
        self.cond_stage_model = FrozenCLIPEmbedderWithCustomWords()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.eval()


class FrozenOpenCLIPEmbedder2(nn.Module):
    """SDXL's second text encoder: the OpenCLIP model is `.model`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class ConcatTimestepEmbedderND(nn.Module):
    """One of SDXL's non-text embedders (no weights loraprompt touches)."""


class Wrapper(nn.Module):
    """A1111's hijack wrapper around an SDXL embedder (`.wrapped`)."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped


class Conditioner(nn.Module):
    def __init__(self, embedders: list[nn.Module]) -> None:
        super().__init__()
        self.embedders = nn.ModuleList(embedders)


class TinySDXL(nn.Module):
    """What A1111 calls `sd_model` for an SDXL checkpoint: SGM UNet names, two text encoders."""

    is_sd1, is_sd2, is_sdxl = False, False, True

    def __init__(self, openclip: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.model = DiffusionWrapper()
        self.conditioner = Conditioner(
            [Wrapper(FrozenCLIPEmbedder()), Wrapper(FrozenOpenCLIPEmbedder2(openclip)), ConcatTimestepEmbedderND()]
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.eval()


class TinySD2(nn.Module):
    """What A1111 calls `sd_model` for an SD2.x checkpoint: the OpenCLIP model is
    `cond_stage_model.wrapped.model` (q/k/v fused in `in_proj_weight`)."""

    is_sd1, is_sd2, is_sdxl = False, True, False

    def __init__(self, openclip: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.model = DiffusionWrapper()
        self.cond_stage_model = Wrapper(FrozenOpenCLIPEmbedder2(openclip))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.eval()


class SelfAttention(nn.Module):
    """modules/models/sd3/mmdit.py's SelfAttention: fused q/k/v and the output projection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)


class DismantledBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = SelfAttention(dim)


class JointBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.context_block = DismantledBlock(dim)
        self.x_block = DismantledBlock(dim)


class MMDiT(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.joint_blocks = nn.ModuleList(JointBlock(dim) for _ in range(depth))


class SD3Cond(nn.Module):
    """modules/models/sd3/sd3_cond.py's SD3Cond (its text encoders are not touched here)."""


class TinySD3(nn.Module):
    """What A1111 v1.10.1 calls `sd_model` for an SD3 checkpoint (modules/models/sd3/sd3_model.py's
    SD3Inferencer): `model.diffusion_model` is the MMDiT, `is_sd3` is set by sd_models.set_model_type,
    and `diffusers_weight_mapping()` yields (diffusers name, A1111 network layer name) pairs, which
    the built-in Lora extension uses for SD3 LoRAs."""

    is_sd1, is_sd2, is_sdxl, is_sd3 = False, False, False, True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = MMDiT()
        self.cond_stage_model = SD3Cond()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.eval()

    def diffusers_weight_mapping(self) -> object:
        for i in range(len(self.model.diffusion_model.joint_blocks)):
            for q in "qkv":
                yield (f"transformer.transformer_blocks.{i}.attn.to_{q}",
                       f"diffusion_model_joint_blocks_{i}_x_block_attn_qkv_{q}_proj")
            yield f"transformer.transformer_blocks.{i}.attn.to_out.0", f"diffusion_model_joint_blocks_{i}_x_block_attn_proj"


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter, by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of parameters that are not bit-identical to `before`."""
    return sorted(k for k, v in module.state_dict().items() if not torch.equal(v, before[k]))
