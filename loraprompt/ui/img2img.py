"""img2img for the web UI: A1111's resize modes, and the diffusers img2img pipeline that shares the
loaded pipeline's modules (so the LoRAs the patcher applied to them are in force)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RESIZE_MODES: tuple[str, ...] = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LATENT_RESIZE = RESIZE_MODES[3]
_IMG2IMG: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def resize_mode(name: str) -> str:
    """`name` when it is one of A1111's resize modes; ValueError naming them otherwise."""
    if name not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {name!r}; choose one of: {', '.join(RESIZE_MODES)}")
    return name


def resize_image(mode: str, image: Any, width: int, height: int) -> Any:
    """`image` brought to width x height as A1111's resize modes do (Lanczos resampling).

    Just resize: stretch. Crop and resize: scale to cover, then crop the middle. Resize and fill:
    scale to fit, centre, and fill the bands by stretching the image's edge rows or columns.
    The latent mode resizes later, in latent space; here it only rounds to a multiple of 8."""
    from PIL import Image

    resize_mode(mode)
    image = image.convert("RGB")
    lanczos = Image.Resampling.LANCZOS
    if mode == LATENT_RESIZE:
        w, h = max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)
        return image if (w, h) == image.size else image.resize((w, h), lanczos)
    if mode == "Just resize":
        return image.resize((width, height), lanczos)
    ratio, src_ratio = width / height, image.width / image.height
    if (ratio > src_ratio) if mode == "Crop and resize" else (ratio < src_ratio):
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = image.resize((max(1, src_w), max(1, src_h)), lanczos)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == "Resize and fill":
        if ratio < src_ratio:
            fill = height // 2 - src_h // 2
            if fill > 0:
                out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                          box=(0, fill + src_h))
        elif ratio > src_ratio:
            fill = width // 2 - src_w // 2
            if fill > 0:
                out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                          box=(fill + src_w, 0))
    return out


def img2img_pipeline(pipe: Any) -> Any:
    """The img2img pipeline over `pipe`'s own modules (built once per pipeline)."""
    found = _IMG2IMG.get(pipe)
    if found is None:
        from diffusers import AutoPipelineForImage2Image

        found = AutoPipelineForImage2Image.from_pipe(pipe)
        found.set_progress_bar_config(disable=True)
        _IMG2IMG[pipe] = found
    return found


@contextmanager
def _vae_precision(vae: Any) -> Iterator[Any]:
    """The VAE in float32 for the block when its config asks for it (SDXL's overflows in float16),
    as the diffusers pipelines upcast it; yields the dtype to feed it."""
    import torch

    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield torch.float32 if upcast else dtype
    finally:
        if upcast:
            vae.to(dtype=dtype)


def encode(pipe: Any, images: list[Any]) -> Any:
    """PIL images -> scaled latents (the distribution's mean), as the pipeline's VAE sees them."""
    import torch

    vae = pipe.vae
    with _vae_precision(vae) as dtype, torch.no_grad():
        pixels = pipe.image_processor.preprocess(images).to(vae.device, dtype)
        latents = vae.encode(pixels).latent_dist.mode()
    return (latents * vae.config.scaling_factor).to(pipe.unet.dtype)


def resize_latents(latents: Any, width: int, height: int, mode: str = "bilinear", antialias: bool = False) -> Any:
    """Latents interpolated to an image size of width x height (A1111's latent upscale)."""
    import torch

    return torch.nn.functional.interpolate(latents, size=(height // 8, width // 8), mode=mode, antialias=antialias)


def decode(pipe: Any, latents: Any) -> list[Any]:
    """Scaled latents -> PIL images through the pipeline's VAE."""
    import torch

    vae = pipe.vae
    with _vae_precision(vae) as dtype, torch.no_grad():
        pixels = vae.decode(latents.to(vae.device, dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return list(pipe.image_processor.postprocess(pixels.float(), output_type="pil"))


def open_image(image: Any) -> Any:
    """An RGB init image from a PIL image or a path, read as A1111 reads one (`images.read`, then
    `images.flatten` with its `img2img_background_color`): upright by its EXIF orientation (a phone
    photo), and transparent pixels on white, not on whatever colour they hide (mostly black).
    ValueError naming the file it cannot read."""
    from PIL import Image, UnidentifiedImageError

    if hasattr(image, "convert"):
        return flatten(image)
    try:
        with Image.open(image) as opened:
            return flatten(opened)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"init image {image}: cannot read it as an image ({exc})") from exc


def flatten(image: Any, background: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """`image` upright (EXIF orientation) and in RGB, its transparency composited onto `background`."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return image.convert("RGB")


def img2img_steps(steps: int, strength: float) -> int:
    """How many steps an img2img pass of `steps` at `strength` runs: int(steps * strength), as in
    A1111 and diffusers, but at least one (see `img2img_schedule`)."""
    return max(1, min(int(steps * strength), steps))


def img2img_schedule(steps: int, strength: float) -> int:
    """The `num_inference_steps` to give diffusers so that `img2img_steps` steps run. When
    steps * strength < 1, diffusers would run none (and fail); a finer schedule of ceil(1/strength)
    steps runs one step from the noise level `strength` asks for."""
    return steps if steps * strength >= 1 else math.ceil(1 / strength)
