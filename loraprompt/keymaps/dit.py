"""Diffusion transformers (SD3/SD3.5, Flux.1, Flux.2, Wan 2.x): their native module names <-> diffusers'.

Adding a family is one `DitFamily` in `DIT_FAMILIES`: a table from the names its own code (and
the files trained on it: kohya, ComfyUI, BFL, Wan) use to diffusers' names, the module names that
identify a loaded diffusers model of it, the key pattern that identifies a file for it, the
widths of the real models, and what trainers write in the header. Everything else (key maps,
family detection, the patcher, the gallery filter) reads these tables.

A table value is the diffusers module a native module is, or a tuple of them when the native
module is several diffusers modules stacked by rows (Flux's fused q/k/v and its single blocks'
q/k/v+MLP projection; SD3's q/k/v): a file's delta for the native module is then split by rows
in that order, each piece's height being its diffusers weight's. A name starting with "~" is an
adaLN projection whose two halves (shift, scale) diffusers stores the other way round (scale,
shift) when the weight holds exactly two chunks (`AdaLayerNormContinuous`).
`{i}` stands for a block index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Table = Mapping[str, "str | tuple[str, ...]"]

_QKV = ("to_q", "to_k", "to_v")
_ADD_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")


def _attn(prefix: str, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}" for n in names)


FLUX: Table = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "~norm_out.linear",
    "double_blocks.{i}.img_attn.qkv": _attn("transformer_blocks.{i}.attn", _QKV),
    "double_blocks.{i}.txt_attn.qkv": _attn("transformer_blocks.{i}.attn", _ADD_QKV),
    "double_blocks.{i}.img_attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "double_blocks.{i}.txt_attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "double_blocks.{i}.img_mlp.0": "transformer_blocks.{i}.ff.net.0.proj",
    "double_blocks.{i}.img_mlp.2": "transformer_blocks.{i}.ff.net.2",
    "double_blocks.{i}.txt_mlp.0": "transformer_blocks.{i}.ff_context.net.0.proj",
    "double_blocks.{i}.txt_mlp.2": "transformer_blocks.{i}.ff_context.net.2",
    "double_blocks.{i}.img_mod.lin": "transformer_blocks.{i}.norm1.linear",
    "double_blocks.{i}.txt_mod.lin": "transformer_blocks.{i}.norm1_context.linear",
    "single_blocks.{i}.linear1": (*_attn("single_transformer_blocks.{i}.attn", _QKV), "single_transformer_blocks.{i}.proj_mlp"),
    "single_blocks.{i}.linear2": "single_transformer_blocks.{i}.proj_out",
    "single_blocks.{i}.modulation.lin": "single_transformer_blocks.{i}.norm.linear",
    # XLabs' single-block qkv_lora: the q/k/v rows of linear1 only (not a BFL module name)
    "single_blocks.{i}.qkv": _attn("single_transformer_blocks.{i}.attn", _QKV),
}

SD3: Table = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "~norm_out.linear",
    "joint_blocks.{i}.x_block.attn.qkv": _attn("transformer_blocks.{i}.attn", _QKV),
    "joint_blocks.{i}.x_block.attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "joint_blocks.{i}.x_block.attn2.qkv": _attn("transformer_blocks.{i}.attn2", _QKV),
    "joint_blocks.{i}.x_block.attn2.proj": "transformer_blocks.{i}.attn2.to_out.0",
    "joint_blocks.{i}.x_block.mlp.fc1": "transformer_blocks.{i}.ff.net.0.proj",
    "joint_blocks.{i}.x_block.mlp.fc2": "transformer_blocks.{i}.ff.net.2",
    "joint_blocks.{i}.x_block.adaLN_modulation.1": "transformer_blocks.{i}.norm1.linear",
    "joint_blocks.{i}.context_block.attn.qkv": _attn("transformer_blocks.{i}.attn", _ADD_QKV),
    "joint_blocks.{i}.context_block.attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "joint_blocks.{i}.context_block.mlp.fc1": "transformer_blocks.{i}.ff_context.net.0.proj",
    "joint_blocks.{i}.context_block.mlp.fc2": "transformer_blocks.{i}.ff_context.net.2",
    "joint_blocks.{i}.context_block.adaLN_modulation.1": "~transformer_blocks.{i}.norm1_context.linear",
}

# Flux.2 keeps Flux.1's native block names, but its single blocks' fused q/k/v+MLP projection is
# one diffusers module too, its MLPs are SwiGLU (`linear_in`/`linear_out`) and its modulations are
# shared by all blocks (diffusers' `_convert_non_diffusers_flux2_lora_to_diffusers`)
FLUX2: Table = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    # (shift, scale) in BFL's weights, (scale, shift) in diffusers': its checkpoint converter swaps
    # them (swap_scale_shift), as for Flux.1; its Flux.2 LoRA converter does not, which looks like a bug
    "final_layer.adaLN_modulation.1": "~norm_out.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "double_blocks.{i}.img_attn.qkv": _attn("transformer_blocks.{i}.attn", _QKV),
    "double_blocks.{i}.txt_attn.qkv": _attn("transformer_blocks.{i}.attn", _ADD_QKV),
    "double_blocks.{i}.img_attn.proj": "transformer_blocks.{i}.attn.to_out.0",
    "double_blocks.{i}.txt_attn.proj": "transformer_blocks.{i}.attn.to_add_out",
    "double_blocks.{i}.img_mlp.0": "transformer_blocks.{i}.ff.linear_in",
    "double_blocks.{i}.img_mlp.2": "transformer_blocks.{i}.ff.linear_out",
    "double_blocks.{i}.txt_mlp.0": "transformer_blocks.{i}.ff_context.linear_in",
    "double_blocks.{i}.txt_mlp.2": "transformer_blocks.{i}.ff_context.linear_out",
    "single_blocks.{i}.linear1": "single_transformer_blocks.{i}.attn.to_qkv_mlp_proj",
    "single_blocks.{i}.linear2": "single_transformer_blocks.{i}.attn.to_out",
}

WAN: Table = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    **{f"blocks.{{i}}.self_attn.{o}": f"blocks.{{i}}.attn1.{d}" for o, d in zip("qkvo", (*_QKV, "to_out.0"))},
    **{f"blocks.{{i}}.cross_attn.{o}": f"blocks.{{i}}.attn2.{d}" for o, d in zip("qkvo", (*_QKV, "to_out.0"))},
    "blocks.{i}.cross_attn.k_img": "blocks.{i}.attn2.add_k_proj",
    "blocks.{i}.cross_attn.v_img": "blocks.{i}.attn2.add_v_proj",
    "blocks.{i}.ffn.0": "blocks.{i}.ffn.net.0.proj",
    "blocks.{i}.ffn.2": "blocks.{i}.ffn.net.2",
}

# what may stand before a transformer module name in a file key
_FILE_PREFIX = r"(?:lora_unet_|lora_transformer_|lycoris_|transformer\.|diffusion_model\.|model\.diffusion_model\.|base_model\.model\.)?"


@dataclass(frozen=True)
class DitFamily:
    """One diffusion-transformer family: its name/label, native -> diffusers table, and rules.

    `model_names`: a loaded diffusers model is this family when one of its module names matches;
    `native_names`: the same for a model loaded under its native names (ComfyUI, Forge, BFL code).
    `file_keys`: a file is for this family when one of its keys matches (any layout).
    `widths`: hidden widths of the released models, telling this family from another whose
    diffusers names are the same (SD3 and Flux share `transformer_blocks.N.attn.add_q_proj`).
    `metadata`: (header key, regex) pairs a trainer writes for it."""

    name: str
    label: str
    table: Table
    model_names: re.Pattern[str]
    file_keys: re.Pattern[str]
    widths: frozenset[int]
    metadata: tuple[tuple[str, str], ...]
    native_names: re.Pattern[str] | None = None


DIT_FAMILIES: tuple[DitFamily, ...] = (
    DitFamily(  # before Flux.1: its files and models share Flux.1's native names and some diffusers names
        "flux2", "Flux.2", FLUX2,
        re.compile(r"^single_transformer_blocks\.\d+\.attn\.to_qkv_mlp_proj$"),
        re.compile(
            r"^" + _FILE_PREFIX + r"(?:single_transformer_blocks[._]\d+[._]attn[._]to_qkv_mlp_proj"
            r"|transformer_blocks[._]\d+[._]ff(?:_context)?[._]linear_(?:in|out)|(?:double|single)_stream_modulation"
            r"|time_guidance_embed)",
            re.M,
        ),
        frozenset({6144}),
        (("modelspec.architecture", r"^flux[-_.]?2"), ("ss_base_model_version", r"^flux[-_.]?2")),
        re.compile(r"^double_stream_modulation_img\.lin$"),
    ),
    DitFamily(
        "flux", "Flux.1", FLUX,
        re.compile(r"^single_transformer_blocks\.\d+\.proj_mlp$"),
        re.compile(
            r"^" + _FILE_PREFIX + r"(?:double_blocks[._]\d+[._](?:img_|txt_|processor)|single_blocks[._]\d+[._]"
            r"(?:linear[12]|modulation|processor)|single_transformer_blocks[._]\d+)",
            re.M,
        ),
        frozenset({3072}),
        (("modelspec.architecture", r"^flux[-_.]?1"), ("ss_base_model_version", r"^flux")),
        re.compile(r"^double_blocks\.\d+\.img_attn\.qkv$"),
    ),
    DitFamily(
        "sd3", "SD3", SD3,
        re.compile(r"^pos_embed\.proj$"),
        re.compile(r"^" + _FILE_PREFIX + r"joint_blocks[._]\d+[._](?:x_block|context_block)", re.M),
        frozenset({1536, 2432}),
        (("modelspec.architecture", r"^stable-diffusion-(?:v)?3"), ("ss_base_model_version", r"^sd3")),
        re.compile(r"^joint_blocks\.\d+\.x_block\.attn\.qkv$"),
    ),
    DitFamily(
        "wan", "Wan 2.x", WAN,
        re.compile(r"^blocks\.\d+\.attn1\.to_q$"),
        re.compile(r"^" + _FILE_PREFIX + r"blocks[._]\d+[._](?:self_attn|cross_attn|attn1|attn2|ffn)[._]", re.M),
        frozenset(),
        (("modelspec.architecture", r"^wan"), ("ss_base_model_version", r"^wan")),
        re.compile(r"^blocks\.\d+\.self_attn\.q$"),
    ),
)
DIT_BY_NAME = {f.name: f for f in DIT_FAMILIES}

# the joint-attention blocks SD3 and Flux share in diffusers naming: one of the two, shapes decide
MMDIT_FILE_KEYS = re.compile(
    r"^" + _FILE_PREFIX + r"transformer_blocks[._]\d+[._](?:attn2?[._](?:add_[qkv]_proj|to_add_out|to_[qkv]|to_out)"
    r"|ff_context|ff[._]net|norm1(?:_context)?[._]linear)",
    re.M,
)
MMDIT_WIDTH_KEYS = re.compile(r"^" + _FILE_PREFIX + r"transformer_blocks[._]\d+[._]attn[._](?:to_[qkv]|add_[qkv]_proj)[._].*$", re.M)


def dit_model_naming(names: set[str]) -> tuple[str, str] | None:
    """(family, "diffusers" or "native") of a loaded transformer (names relative to its root), else None."""
    for family in DIT_FAMILIES:
        if any(family.model_names.match(n) for n in names):
            return family.name, "diffusers"
    for family in DIT_FAMILIES:
        if family.native_names is not None and any(family.native_names.match(n) for n in names):
            return family.name, "native"
    return None


def dit_model_family(names: set[str]) -> str | None:
    """The DiT family of a loaded transformer, in diffusers or native names, else None."""
    found = dit_model_naming(names)
    return None if found is None else found[0]


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of a native module's delta go to `module` (its rows `rows`, or all)."""

    module: str
    start: int
    stop: int
    rows: tuple[int, int] | None = None


def _template(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$")


def native_aliases(family: str, names: set[str], shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[Piece, ...]]:
    """Native module name -> pieces, for every native module whose diffusers modules are all
    loaded (names relative to the root; shapes "module.weight" -> shape, also relative)."""
    table = DIT_BY_NAME[family].table
    out: dict[str, tuple[Piece, ...]] = {}
    for native, value in table.items():
        targets = (value,) if isinstance(value, str) else value
        first = targets[0].lstrip("~")
        if "{i}" in native:
            found = {m[1] for n in names if (m := _template(first).match(n))}
            indices = sorted(found, key=int)
        else:
            indices = [""]
        for i in indices:
            pieces = _pieces([t.replace("{i}", i) for t in targets], names, shapes)
            if pieces is not None:
                out[native.replace("{i}", i)] = pieces
    return out


def _pieces(targets: list[str], names: set[str], shapes: Mapping[str, Sequence[int]]) -> tuple[Piece, ...] | None:
    pieces: list[Piece] = []
    start = 0
    for target in targets:
        swap = target.startswith("~")
        module = target.lstrip("~")
        shape = shapes.get(f"{module}.weight")
        if module not in names or (shape is None and (swap or len(targets) > 1)):
            return None
        if shape is None:  # no shapes known: a 1:1 target needs none
            return (Piece(module, 0, 0),)
        rows = int(shape[0])
        if swap and len(shape) == 2 and rows == 2 * int(shape[1]):
            half = rows // 2
            pieces += [Piece(module, start, start + half, (half, rows)), Piece(module, start + half, start + rows, (0, half))]
        else:
            pieces.append(Piece(module, start, start + rows))
        start += rows
    return tuple(pieces)


def diffusers_aliases(family: str, names: set[str], shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[Piece, ...]]:
    """For a model loaded under native names: diffusers module name -> pieces of native modules
    (`Piece.module` native, `start`/`stop` rows of the diffusers module's delta, `rows` rows of the
    native weight; rows None: the whole weight), and the same for a native name that is the first
    rows of another (XLabs' `single_blocks.N.qkv` in `linear1`). Heights of the stacked modules:
    each is the native weight's width (q, k, v), the last takes the remaining rows (Flux's MLP)."""
    table = DIT_BY_NAME[family].table
    out: dict[str, tuple[Piece, ...]] = {}
    stacked: dict[str, list[tuple[str, tuple[int, int]]]] = {}  # native -> [(diffusers, rows)]
    for native, value in table.items():
        targets = (value,) if isinstance(value, str) else value
        for name in _instances(native, names):
            i = name.split(".")[1] if "{i}" in native else ""
            shape = shapes.get(f"{name}.weight")
            if shape is None:
                continue
            rows, width = int(shape[0]), int(shape[1]) if len(shape) > 1 else 0
            mods = [t.replace("{i}", i) for t in targets]
            if len(mods) == 1:
                module = mods[0].lstrip("~")
                if mods[0].startswith("~") and len(shape) == 2 and rows == 2 * width:
                    half = rows // 2
                    out[module] = (Piece(name, 0, half, (half, rows)), Piece(name, half, rows, (0, half)))
                else:
                    out[module] = (Piece(name, 0, 0),)
                continue
            heights = [width] * (len(mods) - 1) + [rows - width * (len(mods) - 1)]
            start, placed = 0, []
            for module, height in zip(mods, heights):
                out[module] = (Piece(name, 0, height, (start, start + height)),)
                placed.append((module, (start, start + height)))
                start += height
            stacked[name] = placed
    for native, value in table.items():  # a native name that is the first rows of a loaded one
        if isinstance(value, str) or "{i}" not in native:
            continue
        for other, value2 in table.items():
            if other == native or isinstance(value2, str) or value2[: len(value)] != value:
                continue
            for name in _instances(other, names):
                i = name.split(".")[1]
                placed = stacked.get(name, [])[: len(value)]
                if len(placed) == len(value):
                    out[native.replace("{i}", i)] = (Piece(name, 0, placed[-1][1][1], (0, placed[-1][1][1])),)
    return out


def _instances(native: str, names: set[str]) -> list[str]:
    """The loaded module names a table entry (with `{i}`) stands for."""
    if "{i}" not in native:
        return [native] if native in names else []
    pattern = _template(native)
    return sorted((n for n in names if pattern.match(n)), key=lambda n: int(n.split(".")[1]))
