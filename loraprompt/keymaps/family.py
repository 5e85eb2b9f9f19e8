"""Which family a loaded component belongs to, from its module names and parameter shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def _unet_family(names: set[str], shapes: Mapping[str, Sequence[int]]) -> str | None:
    if any(n.startswith(("add_embedding", "label_emb")) for n in names):
        return "sdxl"
    for key, shape in shapes.items():
        if re.search(r"attn2\.to_k\.weight$", key) and len(shape) == 2 and shape[1] in _CONTEXT_WIDTH:
            return _CONTEXT_WIDTH[shape[1]]
    four_levels = any(n.startswith(("down_blocks.3", "input_blocks.11")) for n in names)
    if not four_levels:
        return None
    for key, shape in shapes.items():
        if key.endswith("proj_in.weight"):
            return "sd1" if len(shape) == 4 else "sd2"
    return None


def model_family(component: str, names: set[str], shapes: Mapping[str, Sequence[int]]) -> str | None:
    """"sd1", "sd2", "sdxl" or None for one loaded component (names relative to its root)."""
    if component == "unet":
        return _unet_family(names, shapes)
    if component == "text_encoder_2":
        return "sdxl"
    if any(n.startswith("transformer.resblocks.") for n in names):
        return "sd2"
    return None
