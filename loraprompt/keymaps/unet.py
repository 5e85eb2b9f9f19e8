"""UNet names: diffusers (`down_blocks.1.attentions.0…`) <-> LDM/SGM (`input_blocks.4.1…`).

Every SD family has two resnets per down level (three per up level), so a level b of diffusers is
LDM blocks 1+3b.. (down) and 3b.. (up). The tables below are the only facts; `to_ldm` and
`to_diffusers` apply them to one module name and return None for names with no counterpart
(containers such as `down_blocks.0`).
"""

from __future__ import annotations

import re

# names that have no block index: diffusers <-> LDM
TOP_LEVEL: dict[str, str] = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
TOP_LEVEL_LDM = {v: k for k, v in TOP_LEVEL.items()}

# resnet children: diffusers <-> LDM ResBlock
RESNET: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
RESNET_LDM = {v: k for k, v in RESNET.items()}

_DIFFUSERS = re.compile(
    r"^(?:(?P<dir>down|up)_blocks\.(?P<b>\d+)|(?P<mid>mid_block))\.(?P<kind>resnets|attentions|downsamplers|upsamplers)\.(?P<i>\d+)(?:\.(?P<rest>.+))?$"
)
_LDM = re.compile(r"^(?P<where>input_blocks|output_blocks)\.(?P<k>\d+)\.(?P<j>\d+)(?:\.(?P<rest>.+))?$")
_LDM_MIDDLE = re.compile(r"^middle_block\.(?P<k>\d+)(?:\.(?P<rest>.+))?$")


def _resnet_rest(rest: str | None, table: dict[str, str]) -> str | None:
    if rest is None:
        return ""
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src) :]
    return None


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def to_ldm(name: str, up_with_attention: set[int]) -> str | None:
    """The LDM/SGM name of a diffusers UNet module; `up_with_attention` lists up levels with attention."""
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    m = _DIFFUSERS.match(name)
    if not m:
        return None
    kind, i, rest = m["kind"], int(m["i"]), m["rest"]
    if m["mid"]:
        if kind == "attentions":
            return _join("middle_block.1", rest)
        res = _resnet_rest(rest, RESNET) if kind == "resnets" else None
        return None if res is None else _join(f"middle_block.{2 * i}", res)
    b = int(m["b"])
    if kind == "downsamplers":
        return f"input_blocks.{3 + 3 * b}.0.op" if rest == "conv" else None
    if kind == "upsamplers":
        slot = 2 if b in up_with_attention else 1
        return f"output_blocks.{3 * b + 2}.{slot}.conv" if rest == "conv" else None
    block = f"input_blocks.{1 + 3 * b + i}" if m["dir"] == "down" else f"output_blocks.{3 * b + i}"
    if kind == "attentions":
        return _join(f"{block}.1", rest)
    res = _resnet_rest(rest, RESNET)
    return None if res is None else _join(f"{block}.0", res)


def to_diffusers(name: str) -> str | None:
    """The diffusers name of an LDM/SGM UNet module (the layout is readable from the name alone)."""
    if name in TOP_LEVEL_LDM:
        return TOP_LEVEL_LDM[name]
    mid = _LDM_MIDDLE.match(name)
    if mid:
        k, rest = int(mid["k"]), mid["rest"]
        if k == 1:
            return _join("mid_block.attentions.0", rest)
        res = _resnet_rest(rest, RESNET_LDM)
        return None if res is None else _join(f"mid_block.resnets.{k // 2}", res)
    m = _LDM.match(name)
    if not m:
        return None
    where, k, j, rest = m["where"], int(m["k"]), int(m["j"]), m["rest"]
    if where == "input_blocks":
        if k == 0:
            return None
        b, i = divmod(k - 1, 3)
        if i == 2:
            return f"down_blocks.{b}.downsamplers.0.conv" if (j, rest) == (0, "op") else None
        prefix = f"down_blocks.{b}"
    else:
        b, i = divmod(k, 3)
        if rest == "conv" and j in (1, 2):
            return f"up_blocks.{b}.upsamplers.0.conv"
        prefix = f"up_blocks.{b}"
    if j == 1:
        return _join(f"{prefix}.attentions.{i}", rest)
    res = _resnet_rest(rest, RESNET_LDM)
    return None if res is None or j != 0 else _join(f"{prefix}.resnets.{i}", res)


def up_levels_with_attention(names: set[str]) -> set[int]:
    """Up levels of a diffusers UNet that hold attention blocks."""
    return {int(m[1]) for n in names if (m := re.match(r"^up_blocks\.(\d+)\.attentions\.", n))}
