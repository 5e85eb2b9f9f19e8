"""Hires fix as Automatic1111 does it: a first pass at the requested size, an upscale (in latent space
or of the decoded image), then an img2img second pass with its own steps, denoising strength,
prompt and LoRA strengths (`hr=`, `hrte=`, `hrunet=`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

# A1111's latent upscalers: name -> (torch interpolation mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("Lanczos", "Nearest")  # PIL resampling of the decoded first-pass image
HIRES_UPSCALERS: tuple[str, ...] = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)


@dataclass
class HiresOptions:
    """A1111's "Hires. fix" settings. `resize_x`/`resize_y` (0: unset) replace `scale` when given;
    `steps` 0 means as many as the first pass; an empty prompt means the first pass's."""

    upscaler: str = "Latent"
    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    steps: int = 0
    denoising_strength: float = 0.7
    prompt: str = ""
    negative_prompt: str = ""

    def check(self) -> None:
        """ValueError naming the field that is out of range."""
        if self.upscaler not in HIRES_UPSCALERS:
            raise ValueError(f"unknown hires upscaler {self.upscaler!r}; choose one of: {', '.join(HIRES_UPSCALERS)}")
        if not 0.0 < self.denoising_strength <= 1.0:
            raise ValueError(f"hires denoising strength must be in (0, 1], not {self.denoising_strength:g}")
        if self.resize_x < 0 or self.resize_y < 0 or self.steps < 0:
            raise ValueError("hires resize width/height and steps must not be negative")
        if not (self.resize_x or self.resize_y) and not 1.0 <= self.scale <= 8.0:
            raise ValueError(f"hires upscale must be between 1 and 8, not {self.scale:g}")


class HiresSize(NamedTuple):
    """Where the upscale goes: the size before cropping, and the final (cropped) size."""

    upscale_w: int
    upscale_h: int
    width: int
    height: int


def _eight(n: float) -> int:
    return max(8, int(n) // 8 * 8)


def hires_size(width: int, height: int, opts: HiresOptions) -> HiresSize:
    """A1111's hires target: scale, or resize to a width and/or height (both given: scale to cover,
    then crop the middle). Sizes are rounded down to a multiple of 8 (the VAE's factor)."""
    x, y = opts.resize_x, opts.resize_y
    if not x and not y:
        w, h = _eight(width * opts.scale), _eight(height * opts.scale)
        return HiresSize(w, h, w, h)
    if not y:
        w, h = x, x * height // width
    elif not x:
        w, h = y * width // height, y
    elif width / height < x / y:
        w, h = x, x * height // width
    else:
        w, h = y * width // height, y
    return HiresSize(_eight(w), _eight(h), _eight(x or w), _eight(y or h))


def crop_latents(latents: Any, size: HiresSize) -> Any:
    """Crop latents of the upscale size to the final size, the middle kept (A1111's truncate)."""
    tx, ty = (size.upscale_w - size.width) // 8, (size.upscale_h - size.height) // 8
    return latents[:, :, ty // 2: latents.shape[2] - (ty + 1) // 2, tx // 2: latents.shape[3] - (tx + 1) // 2]


def upscale_images(images: list[Any], size: HiresSize, upscaler: str) -> list[Any]:
    """Decoded first-pass images resized with PIL, then cropped to the final size."""
    from PIL import Image

    resample = Image.Resampling.LANCZOS if upscaler == "Lanczos" else Image.Resampling.NEAREST
    out = []
    for image in images:
        big = image.resize((size.upscale_w, size.upscale_h), resample)
        left, top = (size.upscale_w - size.width) // 2, (size.upscale_h - size.height) // 2
        out.append(big.crop((left, top, left + size.width, top + size.height)))
    return out


def hires_lora_prompt(first_pass: str, hires_prompt: str) -> str:
    """The tags that set the LoRAs of the hires pass, by loraprompt's precedence: the hires
    prompt's own tags when it has any; otherwise the first pass's tags, each with its `hr=`/
    `hrte=`/`hrunet=` strengths in place of its weights where given."""
    from loraprompt.syntax import format_activation, parse

    own = parse(hires_prompt) if hires_prompt else None
    if own is not None and own.loras:
        return hires_prompt
    tags = []
    for a in parse(first_pass).loras:
        te = a.hr_te if a.hr_te is not None else a.te
        unet = a.hr_unet if a.hr_unet is not None else a.unet
        tags.append(format_activation(replace(a, te=te, unet=unet, hr_te=None, hr_unet=None)))
    return " ".join(tags)


def infotext_fields(opts: HiresOptions, prompt: str, negative: str) -> dict[str, Any]:
    """A1111's hires keys, in its order ("Denoising strength" is written by the caller)."""
    from loraprompt.infotext import number

    fields: dict[str, Any] = {}
    if opts.resize_x or opts.resize_y:
        fields["Hires resize"] = f"{opts.resize_x}x{opts.resize_y}"
    else:
        fields["Hires upscale"] = number(opts.scale)
    fields["Hires steps"] = opts.steps or None
    fields["Hires upscaler"] = opts.upscaler
    hr_prompt = opts.prompt or prompt
    hr_negative = opts.negative_prompt or negative
    fields["Hires prompt"] = hr_prompt if hr_prompt != prompt else None
    fields["Hires negative prompt"] = hr_negative if hr_negative != negative else None
    return fields
