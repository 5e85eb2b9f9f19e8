"""Infotext pasting for the web UI: the field values A1111 fills from pasted generation
parameters (LoRA names remapped by hash, hires fix and denoising) and the text of an uploaded PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from loraprompt.infotext import parse_infotext, pasted_prompt
from loraprompt.models.samplers import SAMPLER_LABELS
from loraprompt.ui.hires import HIRES_UPSCALERS


def hash_lookup(library: Any) -> Any:
    """A short-hash -> local LoRA name function over the library, from the hashes it already knows (as
    A1111's paste and /sdapi/v1/png-info): a paste never reads the whole library to hash it."""

    def lookup(wanted: str) -> str | None:
        found = library.find_by_hash(wanted, compute=False)
        return library.display_name(found[0]) if found else None

    return lookup


def paste_values(text: str, library: Any, labels: Sequence[str] = SAMPLER_LABELS) -> tuple[Any, ...]:
    """Field values from pasted infotext, with LoRA names remapped by hash and Additional Networks
    fields made tags, as A1111 does;
    `labels`: the sampler labels the loaded model offers."""
    import gradio as gr

    fields = parse_infotext(text)
    prompt = pasted_prompt(fields, hash_lookup(library))
    label = " ".join(x for x in (fields.get("Sampler"), fields.get("Schedule type")) if x)
    if label not in labels:
        label = fields.get("Sampler", "")

    def number(key: str) -> Any:
        try:
            value = float(fields[key])
        except (KeyError, ValueError):
            return gr.update()
        return value if math.isfinite(value) else gr.update()  # float() reads "nan" and "inf"

    return (
        prompt,
        fields["Negative prompt"],
        label if label in labels else gr.update(),
        number("Steps"),
        number("Size-1"),
        number("Size-2"),
        number("CFG scale"),
        number("Seed"),
        number("Clip skip") if "Clip skip" in fields else 1,  # A1111 omits it when it is 1
    )


PASTE_EXTRAS = ("hires", "hr-upscaler", "hr-scale", "hr-resize-x", "hr-resize-y", "hr-steps", "hr-denoising",
                "hr-prompt", "hr-negative", "denoising", "distilled-cfg", "shift")


def paste_extras(text: str) -> tuple[Any, ...]:
    """Hires fix and denoising fields (in PASTE_EXTRAS order) from pasted infotext, as A1111 pastes
    them: hires fix is on when the text has `Hires upscale`, `Hires resize` or `Hires upscaler`, and
    its `Denoising strength` is the hires pass's; otherwise it is img2img's. Forge's `Distilled
    CFG Scale` and `Shift` (Flux, SD3) fill their fields when present."""
    import gradio as gr

    fields = parse_infotext(text)
    keep = gr.update()

    def number(key: str, default: Any = keep) -> Any:
        try:
            value = float(fields[key])
        except (KeyError, ValueError):
            return default
        return value if math.isfinite(value) else default

    hires = any(k in fields for k in ("Hires upscale", "Hires resize-1", "Hires upscaler"))
    flow = (number("Distilled CFG Scale"), number("Shift"))
    if not hires:
        return (False, *([keep] * 8), number("Denoising strength"), *flow)
    upscaler = fields.get("Hires upscaler")
    return (
        True,
        upscaler if upscaler in HIRES_UPSCALERS else keep,
        number("Hires upscale", 2.0),
        number("Hires resize-1", 0),
        number("Hires resize-2", 0),
        number("Hires steps", 0),
        number("Denoising strength"),
        fields.get("Hires prompt", ""),
        fields.get("Hires negative prompt", ""),
        keep,
        *flow,
    )


def png_infotext(path: str | None) -> str:
    """The `parameters` text chunk of an uploaded PNG (empty when it has none)."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        return ""
    try:
        with Image.open(path) as image:
            return str(getattr(image, "text", {}).get("parameters", ""))
    except (OSError, UnidentifiedImageError):
        return ""
