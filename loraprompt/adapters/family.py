"""Which model family an adapter was made for: SD1.x, SD2.x or SDXL, from metadata, keys and shapes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraprompt.adapters.types import Adapter, AdapterModule

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}

# cross-attention context width / text-encoder width of the real models
_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTH = {1024: "sd2", 1280: "sdxl"}
# parts that are 4-D exactly when the target layer is a conv
_SHAPED_PARTS = ("down", "diff", "lokr_w2", "lokr_w2_b", "b2")

_METADATA_RULES: tuple[tuple[str, str, str], ...] = (
    ("modelspec.architecture", r"stable-diffusion-xl|sdxl", "sdxl"),
    ("modelspec.architecture", r"stable-diffusion-v2", "sd2"),
    ("modelspec.architecture", r"stable-diffusion-v1", "sd1"),
    ("ss_base_model_version", r"sdxl", "sdxl"),
    ("ss_base_model_version", r"sd_v2|v2", "sd2"),
    ("ss_base_model_version", r"sd_v1|v1", "sd1"),
    ("ss_v2", r"^true$", "sd2"),
)


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    """The family a training tool recorded in the header, if any."""
    for key, pattern, family in _METADATA_RULES:
        value = metadata.get(key, "")
        if value and re.search(pattern, value, re.IGNORECASE):
            return family
    return None


def _in_width(mod: AdapterModule) -> int | None:
    t = mod.tensors
    for part in ("down", "hada_w1_b", "lokr_w2_b", "diff", "a2", "b2"):
        if part in t and t[part].dim() >= 2:
            return int(t[part].shape[1]) if part != "diff" else int(t[part].shape[-1])
    return None


def family_from_keys(adapter: Adapter) -> str | None:
    """Infer the family from module names, context widths and projection kinds."""
    mods = list(adapter.modules.values())
    if any(m.component == "text_encoder_2" for m in mods):
        return "sdxl"
    unet = [m for m in mods if m.component == "unet"]
    if any(m.path.startswith(("input_blocks_", "middle_block_", "output_blocks_")) or "label_emb" in m.path or "add_embedding" in m.path for m in unet):
        return "sdxl"
    for m in unet:
        if re.search(r"attn2_to_[kv]$", m.path):
            width = _in_width(m)
            if width in _CONTEXT_WIDTH:
                return _CONTEXT_WIDTH[width]
    for m in mods:
        if m.component == "text_encoder" and m.path.endswith(("q_proj", "k_proj", "v_proj")):
            width = _in_width(m)
            if width in _TE_WIDTH:
                return _TE_WIDTH[width]
    down = {int(x) for m in unet for x in re.findall(r"^down_blocks_(\d+)", m.path)}
    if 3 in down:
        return _sd1_or_sd2(unet)
    if down and any(m.path.startswith("down_blocks_0_attentions") for m in unet):
        return _sd1_or_sd2(unet)
    if down and max(down) <= 2 and any(m.path.startswith("down_blocks_") and "attentions" in m.path for m in unet):
        return "sdxl"
    return None


def _sd1_or_sd2(unet: list[AdapterModule]) -> str | None:
    """SD2 projects in/out of its transformers with Linear layers, SD1 with 1x1 convs; only
    tensors that keep the layer's rank (2-D linear, 4-D conv) can tell."""
    for m in unet:
        if m.path.endswith(("proj_in", "proj_out")):
            for part in _SHAPED_PARTS:
                if part in m.tensors:
                    return "sd1" if m.tensors[part].dim() == 4 else "sd2"
    return None


def detect_family(adapter: Adapter) -> str | None:
    """Metadata first (the trainer knew), then keys and shapes; None when nothing tells."""
    return family_from_metadata(adapter.metadata) or family_from_keys(adapter)
