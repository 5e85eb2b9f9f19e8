"""Splitting a file's tensor key into (component, module path, canonical part, key scheme).

Schemes: kohya and LyCORIS (`lora_unet_<path>.<part>`, `lora_te[12]_…`; "lycoris" for LyCORIS'
wrapper's `lycoris_<path>.<part>`, the same parts), diffusers/PEFT dotted
keys (`unet.<module>.lora_A.weight`, with or without `unet.`/`text_encoder.`/`base_model.model.`),
diffusers' LoRA layers (`….lora.down.weight`, `lora_linear_layer`), and the old
attention-processor format (`….processor.to_q_lora.down.weight`), PEFT's LoHa/LoKr
(`base_model.model.<module>.hada_w1_a`, `.lokr_w1`), and ComfyUI's dotted kohya
parts under `diffusion_model.` / `text_encoders.clip_[lgh].transformer.` (also with PEFT's
`lora_A`/`lora_B`, as BFL and ai-toolkit write Flux files), and XLabs' Flux processors
(`double_blocks.N.processor.qkv_lora1.down.weight`, read as the BFL module they adapt).
Transformer (SD3/Flux/Wan) modules are read under the component "unet" when the key does not
say (`lora_unet_…`, `diffusion_model.…`); the reader moves them to "transformer" once the family
detector has seen the whole file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# kohya / LyCORIS prefix -> component
KOHYA_PREFIXES: dict[str, str] = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",
    "oft_unet_": "unet",
    # LyCORIS' own wrapper (create_lycoris, as SimpleTuner saves Flux/SD3/SDXL LyCORIS): the
    # wrapped model's module names after `lycoris_`; the reader moves a transformer's to "transformer"
    "lycoris_": "unet",
}
# only LyCORIS' wrapper writes it: its files (a plain LoCon too) are read under the scheme "lycoris"
LYCORIS_WRAPPER_PREFIX = "lycoris_"

# part after the first "." in a kohya/LyCORIS key -> canonical part
KOHYA_PARTS: dict[str, str] = {
    "lora_up.weight": "up",
    "lora_down.weight": "down",
    "lora_mid.weight": "mid",
    "lora_up.bias": "bias",
    "alpha": "alpha",
    "scale": "scale",
    "dora_scale": "dora_scale",
    "hada_w1_a": "hada_w1_a",
    "hada_w1_b": "hada_w1_b",
    "hada_w2_a": "hada_w2_a",
    "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1",
    "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1",
    "lokr_w1_a": "lokr_w1_a",
    "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2",
    "lokr_w2_a": "lokr_w2_a",
    "lokr_w2_b": "lokr_w2_b",
    "lokr_t2": "lokr_t2",
    "weight": "weight",
    "on_input": "on_input",
    "diff": "diff",
    "diff_b": "diff_b",
    "w_norm": "w_norm",
    "b_norm": "b_norm",
    "a1.weight": "a1",
    "a2.weight": "a2",
    "b1.weight": "b1",
    "b2.weight": "b2",
    "bm.weight": "bm",
    "oft_blocks": "blocks",
    "oft_diag": "diag",
    "rescale": "rescale",
    "q_layer.weight": "q",
    "p_layer.weight": "p",
    "lambda_layer": "lambda",
}

# dotted-key endings -> canonical part (PEFT, diffusers LoRA layers)
_DOTTED_PART = re.compile(
    r"\.(?:(?P<peft>lora_[AB])(?:\.default)?\.(?P<peft_kind>weight|bias)"
    r"|(?P<mag>lora_magnitude_vector)(?:\.default)?(?:\.weight)?"
    r"|(?:lora|lora_linear_layer)\.(?P<diff>up|down)\.weight"
    r"|(?P<lyco>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2)(?:\.default)?"
    r"|(?P<alpha>alpha))$"
)
_PROCESSOR = re.compile(r"\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<dir>up|down)\.weight$")
_DOTTED_COMPONENTS = ("unet.", "transformer.", "text_encoder.", "text_encoder_2.", "text_encoder_3.")
_PEFT_ROOT = "base_model.model."
# ComfyUI's dotted kohya-style keys: model prefix -> component
COMFY_PREFIXES: dict[str, str] = {
    "diffusion_model.": "unet",
    "text_encoders.clip_l.transformer.": "text_encoder",
    "text_encoders.clip_h.transformer.": "text_encoder",
    "text_encoders.clip_g.transformer.": "text_encoder_2",
    "text_encoders.t5xxl.transformer.": "text_encoder_3",
}
# XLabs' Flux LoRA processors: (block kind, projection, stream) -> the BFL module they adapt
_XLABS = re.compile(r"^(?:diffusion_model\.)?(?P<kind>double|single)_blocks\.(?P<i>\d+)\.processor\.(?P<proj>qkv|proj)_lora(?P<stream>[12]?)\.(?P<dir>down|up)\.weight$")
_XLABS_MODULE = {
    ("double", "qkv", "1"): "img_attn_qkv", ("double", "qkv", "2"): "txt_attn_qkv",
    ("double", "proj", "1"): "img_attn_proj", ("double", "proj", "2"): "txt_attn_proj",
    ("single", "qkv", ""): "qkv", ("single", "proj", ""): "linear2",
}
_TAILS_LONGEST_FIRST = sorted(KOHYA_PARTS, key=len, reverse=True)
# diffusers' convert_state_dict_to_kohya leaves PEFT DoRA magnitudes as
# `lora_unet_…_attn1.to_q.lora_magnitude_vector` (dots kept in the module name)
_MANGLED_MAGNITUDE = ".lora_magnitude_vector"
_TEXT_HINTS = ("text_model.", "encoder.layers.")


@dataclass(frozen=True)
class KeyParts:
    """Where a tensor key belongs: component, module path (kohya spelling), part, scheme."""

    component: str
    path: str
    part: str
    scheme: str


def _dotted_component(module: str) -> tuple[str, str, bool]:
    """(component, module name, had an explicit prefix) for a dotted module name."""
    module = module.removeprefix(_PEFT_ROOT)
    if module + "." in _DOTTED_COMPONENTS:
        return module, "", True
    for prefix in _DOTTED_COMPONENTS:
        if module.startswith(prefix):
            return prefix[:-1], module[len(prefix) :].removeprefix(_PEFT_ROOT), True
    component = "text_encoder" if module.startswith(_TEXT_HINTS) else "unet"
    return component, module, False


def dotted_module(key: str) -> str | None:
    """The dotted module name (no component prefix) of a PEFT/diffusers key, else None."""
    m = _DOTTED_PART.search(key)
    return _dotted_component(key[: m.start()])[1] or None if m else None


def _comfy(rest: str, component: str) -> KeyParts | None:
    """`<dotted module>.<kohya part>` (or PEFT's `lora_A.weight`) under one of ComfyUI's model prefixes."""
    m = _DOTTED_PART.search(rest)
    if m and (m["peft"] or m["mag"]) and m.start() > 0:
        path = rest[: m.start()].replace(".", "_")
        if m["mag"]:
            return KeyParts(component, path, "magnitude", "comfyui")
        if m["peft_kind"] == "bias":
            return KeyParts(component, path, "bias", "comfyui") if m["peft"] == "lora_B" else None
        return KeyParts(component, path, "down" if m["peft"] == "lora_A" else "up", "comfyui")
    for tail in _TAILS_LONGEST_FIRST:
        if rest.endswith("." + tail) and len(rest) > len(tail) + 1:
            return KeyParts(component, rest[: -len(tail) - 1].replace(".", "_"), KOHYA_PARTS[tail], "comfyui")
    return None


def split_key(key: str) -> KeyParts | None:
    """The parts of one tensor key, or None when no scheme claims it."""
    for prefix, component in KOHYA_PREFIXES.items():
        scheme = "lycoris" if prefix == LYCORIS_WRAPPER_PREFIX else "kohya"
        if key.startswith(prefix) and key.endswith(_MANGLED_MAGNITUDE):
            module = key[len(prefix) : -len(_MANGLED_MAGNITUDE)].replace(".", "_")
            return KeyParts(component, module, "magnitude", scheme) if module else None
        if key.startswith(prefix):
            module, _, tail = key[len(prefix) :].partition(".")
            part = KOHYA_PARTS.get(tail)
            return None if part is None or not module else KeyParts(component, module, part, scheme)
    m = _XLABS.match(key)
    if m:
        xlabs = _XLABS_MODULE.get((m["kind"], m["proj"], m["stream"]))
        return KeyParts("transformer", f"{m['kind']}_blocks_{m['i']}_{xlabs}", m["dir"], "xlabs") if xlabs else None
    for prefix, component in COMFY_PREFIXES.items():
        if key.startswith(prefix):
            return _comfy(key[len(prefix) :], component)
    m = _PROCESSOR.search(key)
    if m:
        proj = "to_out_0" if m["proj"] == "to_out" else m["proj"]
        component, module, _ = _dotted_component(key[: m.start()])
        return KeyParts(component, f"{module.replace('.', '_')}_{proj}", m["dir"], "diffusers-old")
    m = _DOTTED_PART.search(key)
    if not m:
        return None
    component, module, explicit = _dotted_component(key[: m.start()])
    if not module:
        return None
    path = module.replace(".", "_")
    if m["peft"]:
        part = ("down" if m["peft"] == "lora_A" else "up") if m["peft_kind"] == "weight" else "bias"
        if part == "bias" and m["peft"] == "lora_A":
            return None
        return KeyParts(component, path, part, "diffusers" if explicit else "peft")
    if m["mag"]:
        return KeyParts(component, path, "magnitude", "diffusers" if explicit else "peft")
    if m["diff"]:
        return KeyParts(component, path, m["diff"], "diffusers-old")
    if m["lyco"]:  # PEFT's LoHa/LoKr (save_pretrained): LyCORIS' part names after the dotted module
        return KeyParts(component, path, m["lyco"], "diffusers" if explicit else "peft")
    return KeyParts(component, path, "alpha", "diffusers" if explicit else "peft")
