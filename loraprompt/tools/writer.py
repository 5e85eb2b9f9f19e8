"""Our own LoRA writers: kohya (`lora_unet_…`), PEFT/diffusers (`unet.….lora_A.weight`), and the
layouts diffusion-transformer LoRAs come in: ComfyUI (`diffusion_model.<module>.lora_down.weight` +
`.alpha`), BFL/ai-toolkit (`diffusion_model.<module>.lora_A.weight`, alpha/rank baked into up) and
XLabs (`double_blocks.N.processor.qkv_lora1.down.weight`, alpha/rank baked into up)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from loraprompt.adapters.keys import COMFY_PREFIXES
from loraprompt.errors import ToolError
from loraprompt.tools.io import save_tensors
from loraprompt.tools.lora import PEFT_METADATA_KEY, XLABS_MODULES, LoraFactors
from loraprompt.tools.naming import dotted_name, is_ldm_unet, ldm_dotted, native_dotted, native_entry

FORMATS = ("kohya", "peft", "comfyui", "bfl", "xlabs")
_COMFY_PREFIX = {"unet": "diffusion_model.", "transformer": "diffusion_model.",
                 **{c: p for p, c in reversed(COMFY_PREFIXES.items()) if c != "unet"}}
_FLAT_CLIP = ("encoder.layers.", "embeddings.", "final_layer_norm")
# kohya's base-model fields by family (as sd-scripts and loraprompt train write them). A1111 v1.10.1
# sorts a LoRA by them (NetworkOnDisk.detect_version): a file with other metadata and none of these
# is SD1 there, so its card is hidden while an SDXL or SD2 model is loaded
BASE_MODEL = {family: {"ss_base_model_version": version, "ss_v2": str(family == "sd2")}
              for family, version in (("sd1", "sd_v1"), ("sd2", "sd_v2"), ("sdxl", "sdxl_base_v1-0"))}
_XLABS_NAMES = {f"{kind}_blocks.{{}}.{native}": proc for (kind, proc), native in XLABS_MODULES.items()}


def _t5(component: str, family: str | None, peft: bool) -> str:
    """Flux.1's T5 is diffusers' `text_encoder_2` (PEFT keys) but kohya's `lora_te3_` and ComfyUI's
    `t5xxl` (sd-scripts' lora_flux; `text_encoder_3` when read): each writer gets its own name."""
    if family == "flux" and component == ("text_encoder_3" if peft else "text_encoder_2"):
        return "text_encoder_2" if peft else "text_encoder_3"
    return component


def _alpha(m: LoraFactors) -> Tensor:
    """kohya's `.alpha` tensor: in the factors' dtype as kohya writes it, or float32 when that dtype
    cannot hold the value (rsLoRA's alpha·√r from a PEFT file, 45.2548 -> 45.25 in fp16/bf16)."""
    value = float(m.rank if m.alpha is None else m.alpha)
    alpha = torch.tensor(value, dtype=m.down.dtype)
    return alpha if float(alpha) == value else torch.tensor(value, dtype=torch.float32)


def kohya_tensors(modules: Iterable[LoraFactors], family: str | None = None) -> dict[str, Tensor]:
    """kohya keys: lora_unet_/lora_te_ (lora_te1_ for CLIP-L on SDXL, SD3 and Flux, as sd-scripts
    writes them, or when another text encoder is present: A1111 maps only lora_te1_/lora_te2_ on
    SDXL, even for a file adapting CLIP-L alone)."""
    mods = list(modules)
    two_te = family in ("sdxl", "sd3", "flux") or any(m.component in ("text_encoder_2", "text_encoder_3") for m in mods)
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if two_te else "lora_te_",
                "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_",
                "transformer": "lora_transformer_"}  # ai-toolkit's prefix for diffusers-named DiT modules
    out: dict[str, Tensor] = {}
    for m in mods:
        name = prefixes[_t5(m.component, family, False)] + m.path
        out[f"{name}.alpha"] = _alpha(m)
        out[f"{name}.lora_down.weight"] = m.down
        if m.mid is not None:
            out[f"{name}.lora_mid.weight"] = m.mid
        out[f"{name}.lora_up.weight"] = m.up
    return out


def diffusers_modules(m: LoraFactors, family: str | None = None) -> list[LoraFactors]:
    """A natively named transformer module (BFL/SAI/Wan: `double_blocks_0_img_attn_qkv`) as the
    diffusers modules it stacks by rows, exactly: each keeps `down` and alpha and takes its rows of
    `up` (q, k, v each as high as the module is wide, Flux's MLP the rest); an adaLN projection has
    its two halves swapped as diffusers stores them. Any other module is returned as it is.
    `family`: the file's, whose native table is read first (Flux.2 shares Flux.1's names)."""
    found = native_entry(m.path, family) if m.component in ("unet", "transformer") else None
    if found is None:
        return [m]
    native, targets = found
    rows, width = int(m.up.shape[0]), int(m.down.shape[1])
    if len(targets) == 1:
        name, up = targets[0].lstrip("~"), m.up
        if targets[0].startswith("~") and m.down.dim() == 2 and rows == 2 * width:
            up = torch.cat([up[rows // 2 :], up[: rows // 2]])
        return [LoraFactors("transformer", name.replace(".", "_"), m.down, up, m.alpha, m.mid, name)]
    heights = [width] * (len(targets) - 1) + [rows - width * (len(targets) - 1)]
    if heights[-1] <= 0:
        raise ToolError(f"{m.key}: up has {rows} rows, too few for {native}'s {len(targets)} stacked modules "
                        f"({width} rows each)")
    out, start = [], 0
    for name, height in zip(targets, heights):
        out.append(LoraFactors("transformer", name.replace(".", "_"), m.down, m.up[start : start + height], m.alpha, m.mid, name))
        start += height
    return out


def peft_tensors(modules: Iterable[LoraFactors], family: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """PEFT keys and the `lora_adapter_metadata` header entry (r, lora_alpha and their patterns);
    natively named transformer modules are written as their diffusers modules (`diffusers_modules`)."""
    out: dict[str, Tensor] = {}
    per_component: dict[str, list[tuple[str, int, float]]] = {}
    for m in (part for module in modules for part in diffusers_modules(module, family)):
        if m.mid is not None:
            raise ToolError(f"{m.key}: CP/Tucker (lora_mid) modules have no PEFT form")
        dotted = m.dotted or dotted_name(m.component, m.path)
        m = replace(m, component=_t5(m.component, family, True))
        if f"{m.component}.{dotted}.lora_A.weight" in out:
            raise ToolError(f"{m.key}: two modules of the input are {m.component}.{dotted} in PEFT names")
        out[f"{m.component}.{dotted}.lora_A.weight"] = m.down
        out[f"{m.component}.{dotted}.lora_B.weight"] = m.up
        alpha = float(m.rank if m.alpha is None else m.alpha)
        # peft matches target_modules and patterns as name suffixes: without CLIP's `text_model.` they
        # match transformers 4's CLIPTextModel and 5's flattened one (diffusers strips the prefix from
        # the tensor keys on 5, not from the metadata, and then finds none of the named modules)
        name = dotted.removeprefix("text_model.") if m.component.startswith("text_encoder") else dotted
        per_component.setdefault(m.component, []).append((name, m.rank, alpha))
    config: dict[str, object] = {}
    for component, rows in per_component.items():
        r = Counter(rank for _, rank, _ in rows).most_common(1)[0][0]
        lora_alpha = Counter(alpha for _, _, alpha in rows).most_common(1)[0][0]
        config[f"{component}.r"] = r
        config[f"{component}.lora_alpha"] = _number(lora_alpha)
        config[f"{component}.rank_pattern"] = {d: rank for d, rank, _ in rows if rank != r}
        config[f"{component}.alpha_pattern"] = {d: _number(a) for d, _, a in rows if a != lora_alpha}
        config[f"{component}.target_modules"] = sorted(d for d, _, _ in rows)
        config[f"{component}.use_dora"] = False
        config[f"{component}.lora_bias"] = False
    return out, {PEFT_METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


def _native_name(m: LoraFactors, family: str | None = None) -> str:
    """The dotted module name a ComfyUI/BFL/XLabs key uses: a transformer module's native (BFL,
    SAI, Wan) name and an SD UNet module's LDM/SGM name, as those tools map only the model's own
    weight names under `diffusion_model.`; CLIP modules under `text_model.` (ComfyUI's
    `clip_l.transformer.text_model.encoder…`)."""
    if m.component in ("unet", "transformer"):
        native = native_dotted(m.path, family)
        if native is not None:
            return native
        if m.component == "unet" and (family in ("sd1", "sd2", "sdxl") or is_ldm_unet(m.path)):
            return ldm_dotted(m.component, m.path, m.dotted, family)
        raise ToolError(f"{m.key}: ComfyUI, BFL and XLabs files name a transformer's modules natively "
                        "(double_blocks.N.img_attn.qkv, …); this diffusers-named module has none (write kohya or peft)")
    name = m.dotted or dotted_name(m.component, m.path)
    if m.component in ("text_encoder", "text_encoder_2") and name.startswith(_FLAT_CLIP):
        return "text_model." + name  # transformers 5's flattened CLIPTextModel names
    return name


def _prefix(component: str, family: str | None) -> str:
    """ComfyUI's place for a component: SD2's OpenCLIP-H is `clip_h`, CLIP-L `clip_l`, SDXL's second `clip_g`."""
    if (family, component) == ("sd2", "text_encoder"):
        return "text_encoders.clip_h.transformer."
    return _COMFY_PREFIX[_t5(component, family, False)]


def native_tensors(modules: Iterable[LoraFactors], fmt: str, family: str | None = None) -> dict[str, Tensor]:
    """ComfyUI, BFL or XLabs keys (see the module docstring)."""
    out: dict[str, Tensor] = {}
    for m in modules:
        if m.mid is not None:
            raise ToolError(f"{m.key}: CP/Tucker (lora_mid) modules have no {fmt} form")
        name = _native_name(m, family)
        up = m.up if m.alpha is None or fmt == "comfyui" else (m.up.float() * m.scale).to(m.up.dtype)
        if fmt == "xlabs":
            kind, _, rest = name.partition("_blocks.")
            index, _, native = rest.partition(".")
            proc = _XLABS_NAMES.get(f"{kind}_blocks.{{}}.{native}")
            if proc is None or not index.isdigit():
                raise ToolError(f"{m.key}: XLabs files adapt Flux's double/single block attention only, not {name}")
            out |= {f"{kind}_blocks.{index}.processor.{proc}.down.weight": m.down,
                    f"{kind}_blocks.{index}.processor.{proc}.up.weight": up}
            continue
        name = _prefix(m.component, family) + name
        if fmt == "comfyui":
            out[f"{name}.alpha"] = _alpha(m)
            out |= {f"{name}.lora_down.weight": m.down, f"{name}.lora_up.weight": up}
        else:
            out |= {f"{name}.lora_A.weight": m.down, f"{name}.lora_B.weight": up}
    return out


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def write_lora(path: Path, modules: Iterable[LoraFactors], fmt: str, metadata: dict[str, str],
               family: str | None = None, *, embeddings: Mapping[str, Tensor] | None = None) -> None:
    """Write LoRA modules atomically in `fmt` ("kohya" or "peft") with the given metadata;
    `family`: the source's, for natively named transformer modules (see `native_entry`), and for
    kohya's base-model fields on SD2 and SDXL when `metadata` has none (`BASE_MODEL`: without them
    A1111 takes the file for SD1; an SD1 file is SD1 there already and is left as it is).
    `embeddings`: bundled `bundle_emb.*` tensors, written after the modules (A1111 reads them from
    any layout but PEFT's, which diffusers and PEFT refuse unknown keys in: ToolError there)."""
    if family in ("sd2", "sdxl") and "ss_base_model_version" not in metadata and "ss_v2" not in metadata:
        metadata = {**metadata, **BASE_MODEL[family]}
    bundled = dict(embeddings or {})
    if bundled and fmt == "peft":
        raise ToolError(f"{next(iter(bundled))}: a bundled embedding has no place in a PEFT file; write kohya "
                        "(or comfyui), which A1111 reads it from")
    if fmt == "kohya":
        save_tensors(path, {**kohya_tensors(modules, family), **bundled}, metadata)
    elif fmt == "peft":
        tensors, extra = peft_tensors(modules, family)
        save_tensors(path, tensors, {**metadata, **extra})
    elif fmt in FORMATS:
        save_tensors(path, {**native_tensors(modules, fmt, family), **bundled}, metadata)
    else:
        raise ToolError(f"unknown LoRA format {fmt!r}; choose one of {', '.join(FORMATS)}")
