"""Kohya's underscored module paths back to dotted diffusers/transformers module names."""

from __future__ import annotations

import re
from functools import cache

from loraprompt.errors import ToolError
from loraprompt.keymaps.unet import to_diffusers, to_ldm

# Module-name segments that themselves contain "_" (diffusers UNet and transformers CLIP).
_SEGMENTS = sorted(
    {
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
        "proj_in", "proj_out", "conv_in", "conv_out", "conv_norm_out", "conv_shortcut", "time_emb_proj",
        "time_embedding", "linear_1", "linear_2", "add_embedding", "add_k_proj", "add_v_proj",
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm1", "layer_norm2",
        "final_layer_norm", "token_embedding", "position_embedding", "text_projection", "class_embedding",
        # SD3 / Flux.1 / Wan 2.x transformers (diffusers names)
        "single_transformer_blocks", "add_q_proj", "to_add_out", "ff_context", "norm1_context", "proj_mlp",
        "time_text_embed", "timestep_embedder", "text_embedder", "guidance_embedder", "context_embedder",
        "x_embedder", "norm_out", "pos_embed", "condition_embedder", "time_embedder", "time_proj",
        "image_embedder", "patch_embedding",
    },
    key=len,
    reverse=True,
)
_SGM_MARKERS = ("input_blocks_", "middle_block_", "output_blocks_", "time_embed_", "label_emb_", "out_")
# LDM/SGM UNet segments with "_" (the rest of an LDM name, inside a transformer block, is diffusers')
_LDM_SEGMENTS = ("input_blocks", "middle_block", "output_blocks", "in_layers", "emb_layers", "out_layers",
                 "skip_connection", "time_embed", "label_emb")
_NATIVE_DIT = ("double_blocks_", "single_blocks_", "joint_blocks_", "blocks_", "img_in", "txt_in", "final_layer_")


def dotted_name(component: str, path: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in`; an LDM/SGM-named
    UNet module (`input_blocks_4_1_proj_in`, as sd-scripts writes SDXL) gets its diffusers name."""
    if component == "unet" and path.startswith((*_SGM_MARKERS, "diffusion_model_")):
        found = ldm_unet_name(path)
        if found is None:
            raise ToolError(f"{component}/{path}: LDM/SGM-named UNet module with no diffusers counterpart; "
                            "diffusers/PEFT files need diffusers module names")
        return found
    if component in ("unet", "transformer") and path.startswith(_NATIVE_DIT):
        raise ToolError(f"{component}/{path}: a natively named (BFL/SAI/Wan) transformer module; PEFT files use "
                        "diffusers names, and a fused q/k/v module has no one diffusers module to go to")
    return _split(path, _SEGMENTS)


def ldm_unet_name(path: str) -> str | None:
    """`input_blocks_4_1_proj_in` (kohya spelling of an LDM/SGM UNet module) -> its diffusers name
    `down_blocks.1.attentions.0.proj_in`, or None when it has none."""
    return to_diffusers(_split(path.removeprefix("diffusion_model_"), (*_LDM_SEGMENTS, *_SEGMENTS)))


# up levels of the SD UNets that hold attention (where an upsampler sits in its LDM block)
_UP_ATTENTION = {"sd1": {1, 2, 3}, "sd2": {1, 2, 3}, "sdxl": {0, 1}}


def is_ldm_unet(path: str) -> bool:
    """Whether a kohya UNet path is spelled with LDM/SGM names (`input_blocks_4_1_…`)."""
    return path.startswith((*_SGM_MARKERS, "diffusion_model_"))


def ldm_dotted(component: str, path: str, dotted: str | None = None, family: str | None = None) -> str:
    """The LDM/SGM dotted name of an SD UNet module (`input_blocks.4.1.proj_in`), as A1111 and ComfyUI
    name the model's weights, from either spelling; ToolError naming the module when it has none."""
    if is_ldm_unet(path):
        found: str | None = _split(path.removeprefix("diffusion_model_"), (*_LDM_SEGMENTS, *_SEGMENTS))
        if found is not None and to_diffusers(found) is None:
            found = None
    else:
        name = dotted or dotted_name(component, path)
        up_attn = _UP_ATTENTION.get(family or "")
        found = None if up_attn is None and ".upsamplers." in name else to_ldm(name, up_attn or set())
    if found is None:
        raise ToolError(f"{component}/{path}: no LDM/SGM UNet name for this module (as ComfyUI and A1111 name "
                        "the model's weights); write kohya or peft")
    return found


def _split(path: str, segments: tuple[str, ...] | list[str]) -> str:
    ordered = sorted(segments, key=len, reverse=True)
    out: list[str] = []
    rest = path
    while rest:
        seg = next((s for s in ordered if rest == s or rest.startswith(s + "_")), None)
        if seg is None:
            seg, _, _ = rest.partition("_")
        out.append(seg)
        rest = rest[len(seg) + 1:]
    return ".".join(out)


@cache
def _native_templates(family: str | None) -> tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...]:
    from loraprompt.keymaps.dit import DIT_FAMILIES

    # Flux.2 reuses Flux.1's native names: it is read with its own table only when the file is one
    order = sorted(DIT_FAMILIES, key=lambda f: (f.name != family, f.name == "flux2" and family != "flux2"))
    out = []
    for found in order:
        for native, value in found.table.items():
            kohya = re.escape(native.replace(".", "_")).replace(r"\{i\}", r"(\d+)")
            out.append((re.compile(f"^{kohya}$"), native, (value,) if isinstance(value, str) else tuple(value)))
    return tuple(out)


def native_entry(path: str, family: str | None = None) -> tuple[str, tuple[str, ...]] | None:
    """`double_blocks_0_img_attn_qkv` -> (`double_blocks.0.img_attn.qkv`, the diffusers modules it
    stacks by rows: `transformer_blocks.0.attn.to_q`, …; "~": adaLN halves swapped), for a natively
    named (BFL, SAI, Wan) transformer module in kohya spelling, else None. `family`: the file's
    (`LoraSet.family`), whose table is read first."""
    for pattern, native, targets in _native_templates(family):
        m = pattern.match(path)
        if m:
            for index in m.groups():
                native = native.replace("{i}", index, 1)
                targets = tuple(t.replace("{i}", index, 1) for t in targets)
            return native, targets
    return None


def native_dotted(path: str, family: str | None = None) -> str | None:
    """`double_blocks_0_img_attn_qkv` -> `double_blocks.0.img_attn.qkv` (see `native_entry`)."""
    found = native_entry(path, family)
    return None if found is None else found[0]
