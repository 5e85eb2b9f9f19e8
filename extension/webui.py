"""A1111's objects as loraprompt values: the loaded model's components, its family, the LoRA
folders and the options. Everything that reads `modules.shared` goes through here."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from modules import shared

if TYPE_CHECKING:
    from torch import nn


def unwrap(module: Any) -> Any:
    """A1111's hijack wraps text encoders (`FrozenCLIPEmbedderWithCustomWords.wrapped`)."""
    return getattr(module, "wrapped", module)


def _text_tower(embedder: Any) -> nn.Module:
    """The HF CLIPTextModel (`.transformer`) or the OpenCLIP model (`.model`) of an embedder."""
    inner = unwrap(embedder)
    tower = getattr(inner, "transformer", None)
    if tower is not None and hasattr(tower, "text_model"):
        return tower  # type: ignore[no-any-return]
    model = getattr(inner, "model", None)
    if model is not None and hasattr(model, "transformer"):
        return model  # type: ignore[no-any-return]
    return tower if tower is not None else inner  # type: ignore[no-any-return]


def model_components(sd_model: Any) -> dict[str, nn.Module]:
    """The modules loraprompt patches, by diffusers component name (never the VAE)."""
    # SD1: cond_stage_model.wrapped.transformer (HF CLIP); SD2: cond_stage_model.wrapped.model
    # (OpenCLIP); SDXL: conditioner.embedders[0] (CLIP-L) and [1] (OpenCLIP bigG), skipping the
    # non-text embedders. The UNet is model.diffusion_model (LDM/SGM names) in every family.
    out: dict[str, nn.Module] = {"unet": sd_model.model.diffusion_model}
    conditioner = getattr(sd_model, "conditioner", None)
    if getattr(sd_model, "is_sdxl", False) and conditioner is not None:
        embedders = [e for e in conditioner.embedders if hasattr(unwrap(e), "transformer") or hasattr(unwrap(e), "model")]
        for name, embedder in zip(("text_encoder", "text_encoder_2"), embedders):
            out[name] = _text_tower(embedder)
    else:
        out["text_encoder"] = _text_tower(sd_model.cond_stage_model)
    return out


def model_family(sd_model: Any) -> str | None:
    """"sd1", "sd2", "sdxl" or "sd3" from A1111's own flags (the gallery's base-model filter);
    None for other models."""
    if getattr(sd_model, "is_sd3", False) is True:
        return "sd3"
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    if getattr(sd_model, "is_sd1", False):
        return "sd1"
    return None


def no_hashing() -> bool:
    """A1111's --no-hashing: hashes are not computed, only read where known (modules/hashes.py)."""
    return bool(getattr(shared.cmd_opts, "no_hashing", False))


def lora_dirs() -> list[str]:
    """The folders A1111 scans for LoRAs: --lora-dir and --lyco-dir-backcompat (when present),
    each real folder once."""
    from modules import paths

    args = shared.cmd_opts
    dirs = [
        getattr(args, "lora_dir", None) or os.path.join(paths.models_path, "Lora"),
        getattr(args, "lyco_dir_backcompat", None) or os.path.join(paths.models_path, "LyCORIS"),
    ]
    seen: list[str] = []
    real: list[str] = []
    for d in dirs:  # `models/LyCORIS` is often a link to `models/Lora`: one folder, listed once
        if os.path.isdir(d) and os.path.realpath(d) not in real:
            seen.append(os.path.abspath(d))
            real.append(os.path.realpath(d))
    return seen  # a folder inside the other is left to the Library (`distinct_roots`)


def popup(message: str) -> None:
    """A warning popup in the browser (gradio's toast); outside a UI request it is only logged."""
    import gradio as gr

    gr.Warning(message)


def cache_dir() -> str:
    """Where the library keeps its scan cache: A1111's data folder, beside its own caches."""
    from modules import paths

    return os.path.join(paths.data_path, "cache", "loraprompt")


def opt(name: str, default: Any) -> Any:
    """An option value, or `default` when the option is not registered (yet)."""
    opts = shared.opts
    if opts is None:
        return default
    return opts.data.get(name, default) if name not in opts.data_labels else getattr(opts, name)


def registered(name: str) -> bool:
    """True when an option is registered now (another extension's, such as the built-in Lora's,
    only while that extension is enabled; config.json keeps a value after it is disabled)."""
    opts = shared.opts
    return opts is not None and name in opts.data_labels


def profile() -> Literal["loraprompt", "a1111"]:
    """The tag profile setting (Settings > loraprompt); any other value, from a hand-edited
    config.json, is loraprompt's own."""
    return "a1111" if opt("loraprompt_profile", "loraprompt") == "a1111" else "loraprompt"


def loaded_model() -> Any:
    """The loaded model, or None; never starts a load (A1111's `shared.sd_model` would)."""
    try:
        from modules import sd_models
    except ImportError:
        return shared.sd_model
    return getattr(getattr(sd_models, "model_data", None), "sd_model", None)


# The options that change what a prompt's tags do to the text encoder. A1111 caches conditioning
# by prompt text and extra-network parameters (processing.StableDiffusionProcessing.cached_params),
# neither of which changes with these, so after a change its cache would hand back the text
# encoder's output under the old setting (seen in A1111 v1.10.1: the same prompt gave the UNet with
# the LoRA and the conditioning without it).
CONDS_OPTIONS = ("loraprompt_profile", "loraprompt_family_check")


def conds_options() -> tuple[Any, ...]:
    return tuple(opt(name, None) for name in CONDS_OPTIONS)


def forget_cached_conds() -> None:
    """Empty A1111's cond caches in place (the lists every processing object shares): the class
    attributes cached_c/cached_uc and, for txt2img, cached_hr_c/cached_hr_uc."""
    from modules import processing

    for cls_name, names in (("StableDiffusionProcessing", ("cached_c", "cached_uc")),
                            ("StableDiffusionProcessingTxt2Img", ("cached_hr_c", "cached_hr_uc"))):
        cls = getattr(processing, cls_name, None)
        for name in names:
            cache = getattr(cls, name, None)
            if isinstance(cache, list):
                cache[:] = [None] * len(cache)
