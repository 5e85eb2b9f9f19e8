"""Text-encoder names: transformers CLIP (4.x `text_model.…`, 5.x flattened) and OpenCLIP.

Files spell text-encoder modules the transformers-4 way (`text_model_encoder_layers_0_self_attn_q_proj`).
OpenCLIP (Automatic1111's SD2 encoder and SDXL's second one) fuses q/k/v into one
`in_proj_weight`; each of q/k/v is then a row slice of it.
"""

from __future__ import annotations

import re

# OpenCLIP resblock child -> transformers CLIP encoder-layer child
OPENCLIP_LAYER: dict[str, str] = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
}
# OpenCLIP top-level module -> transformers CLIP text-model module
OPENCLIP_TOP: dict[str, str] = {
    "ln_final": "final_layer_norm",
    "token_embedding": "embeddings.token_embedding",
}
QKV = ("q_proj", "k_proj", "v_proj")

_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_HF_INNER = ("embeddings", "encoder", "final_layer_norm")


def hf_canonical(name: str) -> str | None:
    """A transformers CLIP module name in the 4.x spelling (`text_model.` added when flattened)."""
    if name.startswith("text_model."):
        return name
    if name.split(".", maxsplit=1)[0] in _HF_INNER:
        return "text_model." + name
    return None


def openclip_aliases(name: str) -> list[tuple[str, str | None]]:
    """[(transformers-4 name, q/k/v slot or None)] for one OpenCLIP module name."""
    if name in OPENCLIP_TOP:
        return [("text_model." + OPENCLIP_TOP[name], None)]
    m = _RESBLOCK.match(name)
    if not m:
        return []
    layer, child = m[1], m[2]
    base = f"text_model.encoder.layers.{layer}."
    if child == "attn":
        return [(base + "self_attn." + proj, proj) for proj in QKV]
    if child in OPENCLIP_LAYER:
        return [(base + OPENCLIP_LAYER[child], None)]
    return []


def is_openclip(names: set[str]) -> bool:
    """Whether these module names are an OpenCLIP text tower."""
    return any(_RESBLOCK.match(n) for n in names)
