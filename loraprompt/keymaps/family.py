"""The one family detector: which model family a loaded component, or an adapter file, is for.

Files: `detect_file_family(shapes, metadata)` over the tensor names and shapes of a file (the
safetensors header is enough, so the library calls it without torch; the reader calls it with the
loaded tensors' shapes) and its `__metadata__`. The evidence is weighed in this order:
1. diffusion-transformer module names (`double_blocks`, `joint_blocks`, Wan's `blocks.N.self_attn`,
   ...: no SD model has them), with the hidden width telling SD3 from Flux in diffusers naming;
2. shapes: the cross-attention context width (768 SD1, 1024 SD2, 2048 SDXL), the text encoders'
   widths, and whether the transformer projections are 1x1 convs (SD1) or linears (SD2);
3. names only SDXL has (`label_emb`, `add_embedding`, a second CLIP, SGM attention blocks with
   several transformer blocks); a `lora_te1_` prefix alone says nothing (diffusers writes it for SD1);
4. the trainer's metadata (`modelspec.architecture`, `ss_base_model_version`, `ss_v2`).
A disagreement between the first three and the metadata is reported as `conflict`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from loraprompt.keymaps.dit import (
    DIT_BY_NAME,
    DIT_FAMILIES,
    MMDIT_FILE_KEYS,
    MMDIT_WIDTH_KEYS,
    dit_model_family,
)

# family -> label shown to users (badges, messages); DiT labels come from their tables
FAMILY_NAMES: dict[str, str] = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", **{f.name: f.label for f in DIT_FAMILIES}}
DIT = frozenset(DIT_BY_NAME)

_CONTEXT_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTH = {768: "sd1", 1024: "sd2"}
_TE2 = re.compile(r"^(?:lora_te2_|text_encoder_2\.|te2[._]|text_encoders\.clip_g\.)", re.M)
_TE1 = re.compile(r"^(?:lora_te1?_|text_encoder\.|text_encoders\.clip_[lh]\.|te1?[._])", re.M)
# SD1/SD2 have one transformer block per UNet attention, SDXL up to ten
_SDXL_BLOCK = re.compile(r"(?:attentions[._]\d+|_\d+_1|\.\d+\.1|middle_block[._]1)[._]transformer_blocks[._][1-9]")
_SDXL_BLOCK_HINT = re.compile(r"transformer_blocks[._][1-9]")
_SGM = re.compile(r"^(?:lora_unet_|unet\.|diffusion_model\.)?(?:input_blocks|output_blocks|middle_block)[._]", re.M)
_FOUR_LEVELS = re.compile(r"down_blocks[._]3[._]|down_blocks[._]0[._]attentions")
# tensors that keep the layer's rank: 4-D exactly when the layer is a conv
_SHAPED_TAILS = ("lora_down.weight", "lora_A.weight", "lora_A.default.weight", ".diff", "lokr_w2", "lokr_w2_b", "b2.weight")

_METADATA_SD: tuple[tuple[str, str, str], ...] = (
    ("modelspec.architecture", r"^stable-diffusion-xl", "sdxl"),
    ("modelspec.architecture", r"^stable-diffusion-v2", "sd2"),
    ("modelspec.architecture", r"^stable-diffusion-v1", "sd1"),
    ("ss_base_model_version", r"^sdxl", "sdxl"),
    ("ss_base_model_version", r"^sd_v2", "sd2"),
    ("ss_base_model_version", r"^sd_v1", "sd1"),
    ("ss_v2", r"^true$", "sd2"),
)


@dataclass(frozen=True)
class Detection:
    """A file's family, where it came from ("keys" for names and shapes, "metadata"), a note when
    the metadata disagrees, and whether its denoiser modules are a UNet's or a transformer's."""

    family: str | None
    source: str | None = None
    conflict: str | None = None
    denoiser: str = "unet"


# (key, pattern, family), the first match winning: compiled once (the library's cold scan asks per file)
_METADATA_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (key, re.compile(pattern, re.IGNORECASE), family)
    for key, pattern, family in [(k, p, f.name) for f in DIT_FAMILIES for k, p in f.metadata] + list(_METADATA_SD)
)


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The family a training tool recorded in the header, if any."""
    for key, pattern, family in _METADATA_RULES:
        value = metadata.get(key)
        if isinstance(value, str) and value and pattern.search(value.strip()):
            return family
    if "ss_network_module" in metadata and metadata.get("ss_v2") == "False" and not metadata.get("ss_base_model_version"):
        return "sd1"  # kohya before ss_base_model_version: not v2 and not SDXL (SDXL wrote the version)
    return None


_LINE_STARTS: dict[re.Pattern[str], re.Pattern[str]] = {}


def _at_line_start(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """`pattern` with its `^` (re.M: at a key's start) made a literal newline, for `keys`
    strings that start with one. The regex engine tries a `^` pattern at every character of a
    string, but a pattern led by a literal only where that literal is: over a file's 16 kB of key
    names that is ~90 µs against a few, and the library's cold scan runs a dozen per file."""
    found = _LINE_STARTS.get(pattern)
    if found is None:
        text = pattern.pattern
        if text.startswith("^"):
            text = "\n" + text[1:].removesuffix("$")  # `.*$` ran to the key's end; `.*` does too
            found = re.compile(text, pattern.flags & ~re.M)
        else:
            found = pattern
        _LINE_STARTS[pattern] = found
    return found


def _search(pattern: re.Pattern[str], keys: str) -> bool:
    return _at_line_start(pattern).search(keys) is not None


def _lines(keys: str, pattern: re.Pattern[str], limit: int = 64) -> Iterator[str]:
    """Up to `limit` whole keys (lines of `keys`) matching `pattern`, found at C speed."""
    for n, m in enumerate(_at_line_start(pattern).finditer(keys)):
        if n >= limit:
            break
        # a match led by the newline before its key starts one character on
        start, end = keys.rfind("\n", 0, m.start() + 1) + 1, keys.find("\n", m.end())
        yield keys[start : end if end >= 0 else len(keys)]


def _width(keys: str, shapes: Mapping[str, Sequence[int]], pattern: re.Pattern[str], widths: Mapping[int, str]) -> str | None:
    for name in _lines(keys, pattern):
        found = next((widths[d] for d in shapes.get(name) or () if d in widths), None)
        if found:
            return found
    return None


# Flux.1 and Flux.2 share their native names; the height of a fused module over the hidden width
# tells them apart: single blocks' linear1 is q/k/v + MLP (7 widths in Flux.1, 9 with Flux.2's
# SwiGLU) and a double block's img_mlp.0 the MLP's input (4 widths, 6 in Flux.2)
_FLUX_FUSED = re.compile(r"^.*(?:single_blocks[._]\d+[._]linear1|double_blocks[._]\d+[._](?:img|txt)_mlp[._]0)"
                         r"[._](?:lora_up|lora_B|lora_down|lora_A)[._]weight$", re.M)
_FLUX2_RATIOS = {"linear1": 9, "mlp": 6}


def _flux_generation(keys: str, shapes: Mapping[str, Sequence[int]]) -> str:
    """"flux2" when a Flux file under native names has Flux.2's fused heights, else "flux"."""
    for name in _lines(keys, _FLUX_FUSED, limit=8):
        if not re.search(r"(?:lora_up|lora_B)[._]weight$", name):
            continue
        down = re.sub(r"(lora_up|lora_B)([._]weight)$", lambda m: ("lora_down" if m[1] == "lora_up" else "lora_A") + m[2], name)
        up_shape, down_shape = shapes.get(name), shapes.get(down)
        if not up_shape or not down_shape or len(down_shape) < 2 or not down_shape[1]:
            continue
        ratio = up_shape[0] / down_shape[1]
        return "flux2" if ratio == _FLUX2_RATIOS["linear1" if "linear1" in name else "mlp"] else "flux"
    return "flux"


def _dit(keys: str, shapes: Mapping[str, Sequence[int]]) -> tuple[bool, str | None]:
    """(whether the keys are a diffusion transformer's, which family when they tell)."""
    for family in DIT_FAMILIES:
        if _search(family.file_keys, keys):
            return True, _flux_generation(keys, shapes) if family.name == "flux" else family.name
    if not _search(MMDIT_FILE_KEYS, keys):
        return False, None
    by_width = {w: f.name for f in DIT_FAMILIES for w in f.widths}
    found = _width(keys, shapes, MMDIT_WIDTH_KEYS, by_width)
    if found:
        return True, found
    if re.search(r"transformer_blocks[._]\d+[._]attn2[._]|pos_embed", keys):
        return True, "sd3"  # SD3.5's dual attention; the patch embedding is a conv in SD3 only
    if re.search(r"x_embedder|guidance_embedder", keys):
        return True, "flux"
    return True, None


def _sd_by_shapes(keys: str, shapes: Mapping[str, Sequence[int]]) -> str | None:
    found = _width(keys, shapes, re.compile(r"attn2[._]to_[kv]"), _CONTEXT_WIDTH)
    if found:
        return found
    te2 = _search(_TE2, keys)
    if te2 and _width(keys, shapes, re.compile(r"^(?:lora_te2_|text_encoder_2\.|text_encoders\.clip_g\.).*(?:q_proj|k_proj|v_proj|fc1)", re.M), {1280: "sdxl"}):
        return "sdxl"
    if not te2:
        te = re.compile(r"^(?:lora_te1?_|text_encoder\.|text_encoders\.clip_[lh]\.).*(?:self_attn|mlp)", re.M)
        found = _width(keys, shapes, te, _TE_WIDTH)
        if found:
            return found
    if _FOUR_LEVELS.search(keys):
        for name in _lines(keys, re.compile(r"proj_in")):
            if name.endswith(_SHAPED_TAILS) and name in shapes:
                return "sd1" if len(shapes[name]) == 4 else "sd2"
    return None


def _sd_by_names(keys: str) -> str | None:
    if "add_embedding" in keys or "label_emb" in keys or _search(_TE2, keys) or _search(_SGM, keys):
        return "sdxl"
    # the literal first: the engine finds it fast, the whole pattern (no literal lead) slowly
    if _SDXL_BLOCK_HINT.search(keys) and _SDXL_BLOCK.search(keys):
        return "sdxl"
    down = {int(x) for x in re.findall(r"down_blocks[._](\d+)[._]attentions", keys)}
    if down and max(down) <= 2 and 0 not in down and not _FOUR_LEVELS.search(keys):
        return "sdxl"  # SDXL's first level has no attention and there is no fourth
    return None


def detect_file_family(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> Detection:
    """The family of an adapter file from its tensor names -> shapes and its header metadata."""
    metadata = metadata or {}
    keys = "\n" + "\n".join(shapes)  # searched as one string: C speed over thousands of keys
    by_meta = family_from_metadata(metadata)
    is_dit, family = _dit(keys, shapes)
    if not is_dit:
        family = _sd_by_shapes(keys, shapes) or _sd_by_names(keys)
    elif family is None and by_meta in DIT:
        return Detection(by_meta, "metadata", denoiser="transformer")
    denoiser = "transformer" if is_dit else "unet"
    if family is None:
        return Detection(by_meta, "metadata" if by_meta else None, denoiser=denoiser)
    conflict = None
    if by_meta and by_meta != family:
        conflict = f"the metadata says {FAMILY_NAMES[by_meta]}, the tensor names and shapes say {FAMILY_NAMES[family]}"
    return Detection(family, "keys", conflict, denoiser)


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
    """The family of one loaded component (names relative to its root), or None."""
    if component == "transformer":
        return dit_model_family(names)
    if component == "unet":
        return _unet_family(names, shapes) or dit_model_family(names)
    if component == "text_encoder_2":
        # SDXL's second text encoder is a CLIP; SD3's is too (its transformer decides), Flux's is T5
        return None if any(".SelfAttention." in n or n.startswith("block.") for n in names) else "sdxl"
    if any(n.startswith("transformer.resblocks.") for n in names):
        return "sd2"
    return None
