"""Automatic1111's routes that take an image: `POST /sdapi/v1/png-info` (the infotext an image
carries, and A1111's fields of it) and `POST /sdapi/v1/img2img`: txt2img's fields plus `init_images` (base64, with or
without a `data:image/...;base64,` prefix, as `webuiapi` sends them), `resize_mode` (A1111's
0-3), `denoising_strength` and `include_init_images` (whether `parameters` echoes the images). Inpainting (`mask`) is not done here: it is
named in `info["warnings"]` like every other field that would change the image. Base64 may be
wrapped in lines (MIME), as A1111 accepts it.

As in A1111, one init image serves the whole batch, and k images (k <= batch_size) make a batch of
k, image i of every iteration starting from init image i."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from loraprompt.infotext import image_infotext, parse_infotext, pasted_prompt
from loraprompt.serve.errors import ServeError, invalid
from loraprompt.serve.jobs import ImageTask
from loraprompt.serve.sdapi import (
    Txt2ImgBody,
    generate,
    model_title,
    png_b64,
    txt2img_tasks,
    unused_warnings,
)
from loraprompt.serve.service import Service
from loraprompt.ui.img2img import RESIZE_MODES, open_image
from loraprompt.ui.paste import hash_lookup

T = TypeVar("T")
_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
MAX_INIT_PIXELS = 64 * 1024 * 1024  # a larger init image is refused before it is decoded (decompression bombs)
# img2img fields that only act with a mask or on instruct-pix2pix models: inert here
_QUIET = {"mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
          "inpainting_mask_invert", "image_cfg_scale", "latent_mask", "mask_round"}
_INERT = {"initial_noise_multiplier": (1, 1.0, None)}


class Img2ImgBody(Txt2ImgBody):
    """A1111's StableDiffusionImg2ImgProcessingAPI, the fields this server uses."""

    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = 0.75
    include_init_images: bool = False


def image_bytes(data: Any, field: tuple[str, ...]) -> bytes:
    """The bytes of A1111's base64 encoding of an image (a `data:` prefix, and line breaks as
    MIME-wrapped base64 has them, allowed); 422 naming `field` when it is not base64."""
    if not isinstance(data, str) or not data.strip():
        raise invalid(field, "is not a base64-encoded image")
    data = data.strip()
    if data.startswith(("http://", "https://")):
        raise invalid(field, "image URLs are not fetched by loraprompt serve; send the image as base64")
    data = _ASCII_SPACE.sub("", data)  # base64.encodebytes and `base64 img.png` wrap lines; A1111 accepts them
    if data.startswith("data:"):
        data = data.partition(",")[2]  # "data:image/png;base64,...."
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "is not valid base64") from None


def read_image(raw: bytes, field: tuple[str, ...], read: Callable[[Any], T]) -> T:
    """`read(image)` of the PIL image in `raw`; 422 naming `field` when it is not an image or is
    over MAX_INIT_PIXELS (checked before the pixels are decoded)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > MAX_INIT_PIXELS:
                raise invalid(field, f"is {image.width}x{image.height} pixels; at most {MAX_INIT_PIXELS} pixels")
            image.load()
            return read(image)
    except ServeError:
        raise
    except Exception as exc:  # PIL raises many kinds for a bad file (OSError, SyntaxError, DecompressionBombError...)
        raise invalid(field, f"cannot be read as an image ({type(exc).__name__}: {exc})") from None


def decode_image(data: Any, field: tuple[str, ...]) -> Any:
    """A PIL image (RGB) from A1111's base64 encoding of one, read as A1111 reads an init image
    (upright, transparency on white: `open_image`); 422 naming `field` when it is not one."""
    return read_image(image_bytes(data, field), field, open_image)


def img2img_tasks(service: Service, body: Img2ImgBody) -> tuple[list[ImageTask], int, Img2ImgBody]:
    """The images the body asks for, each with its init image; the clip skip; and the body as run
    (batch_size set to the number of init images when there are several, as A1111 does)."""
    if not body.init_images:
        raise invalid("init_images", "img2img needs at least one init image")
    if not 0 <= body.resize_mode < len(RESIZE_MODES):
        raise invalid("resize_mode", f"must be 0 to {len(RESIZE_MODES) - 1} ({', '.join(RESIZE_MODES)}), "
                      f"got {body.resize_mode}")
    if not 0 < body.denoising_strength <= 1:
        raise invalid("denoising_strength", f"must be greater than 0 and at most 1, got {body.denoising_strength:g}")
    count = len(body.init_images)
    if count > 1:
        if count > body.batch_size:
            raise invalid("init_images", f"has {count} images for a batch_size of {body.batch_size}; "
                          "send one image, or at most batch_size")
        body = body.model_copy(update={"batch_size": count})
    tasks, clip_skip = txt2img_tasks(service, body)  # checks the limits before any image is decoded
    images = [decode_image(d, ("init_images", str(i))) for i, d in enumerate(body.init_images)]
    mode = RESIZE_MODES[body.resize_mode]
    tasks = [dataclasses.replace(t, request=dataclasses.replace(
        t.request, init_image=images[i % count], denoising_strength=body.denoising_strength,
        resize_mode=mode)) for i, t in enumerate(tasks)]
    return tasks, clip_skip, body


class PngInfoBody(BaseModel):
    image: str


def add_routes(router: Any, service: Service) -> None:
    """Register POST /sdapi/v1/img2img and /sdapi/v1/png-info (plain functions: FastAPI runs them
    in its threadpool)."""

    @router.post("/sdapi/v1/png-info")
    def png_info(body: PngInfoBody) -> dict[str, Any]:
        """A1111's answer: `info` the infotext ("" when the image has none; a JPEG's or WebP's is
        its EXIF UserComment), `items` the image's other text chunks, `parameters` the infotext's
        fields after the paste callbacks A1111 runs on them (modules/api/api.py:597-598): the
        prompt's LoRAs renamed to local files by known hash, Additional Networks fields as tags."""
        info, items = read_image(image_bytes(body.image, ("image",)), ("image",), image_infotext)
        if not info.strip():
            return {"info": info, "items": items, "parameters": {}}
        fields = parse_infotext(info)
        # hashes already known, as A1111 and the web UI's paste: a request never hashes the library
        prompt = pasted_prompt(fields, hash_lookup(service.library))
        return {"info": info, "items": items, "parameters": {**fields, "Prompt": prompt}}

    @router.post("/sdapi/v1/img2img")
    def img2img(body: Img2ImgBody) -> dict[str, Any]:
        tasks, clip_skip, body = img2img_tasks(service, body)
        warnings = unused_warnings(body, model_title(service), service.model.name, quiet=_QUIET, inert=_INERT)
        job, info = generate(service, "img2img", tasks, body, clip_skip=clip_skip, warnings=warnings)
        info["denoising_strength"] = body.denoising_strength
        parameters = body.model_dump()
        if not body.include_init_images:  # A1111 does not echo the images back unless asked
            parameters["init_images"] = None
            parameters["mask"] = None
        images = [png_b64(o.png) for o in job.images] if body.send_images else []
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}
