"""What a generation writes: A1111's infotext fields beyond the basic ones, and the PNG files
(`parameters` chunk, A1111's folder layout and numbering) that carry it."""

from __future__ import annotations

import datetime
import io
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import loraprompt
from loraprompt.infotext import number

if TYPE_CHECKING:
    from loraprompt.ui.txt2img import Txt2ImgRequest


def infotext_extra(request: Txt2ImgRequest, clip_skip: int, img2img: bool) -> dict[str, Any]:
    """The infotext fields of `request` after the basic ones: denoising strength, clip skip, hires
    fix and version, in A1111's order."""
    from loraprompt.ui.hires import infotext_fields

    extra: dict[str, Any] = {}
    if img2img:
        extra["Denoising strength"] = number(float(request.denoising_strength))
    elif request.hires is not None:
        extra["Denoising strength"] = number(request.hires.denoising_strength)
    extra["Clip skip"] = clip_skip if clip_skip > 1 else None
    if request.hires is not None and not img2img:
        extra.update(infotext_fields(request.hires, request.prompt, request.negative_prompt))
    extra["Version"] = f"loraprompt {loraprompt.__version__}"
    return extra


def _write_png(image: Any, infotext: str, out: IO[bytes]) -> None:
    """`image` as PNG with the infotext in a `parameters` text chunk, as A1111 writes it."""
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("parameters", infotext)
    image.save(out, format="PNG", pnginfo=meta)


def png_bytes(image: Any, infotext: str) -> bytes:
    """The bytes `save_png` would write for `image`, without a file."""
    out = io.BytesIO()
    _write_png(image, infotext, out)
    return out.getvalue()


def save_png(image: Any, infotext: str, outputs_dir: Path, seed: int, kind: str = "txt2img-images") -> Path:
    """Save as A1111 does: `<outputs>/<kind>/<date>/<NNNNN>-<seed>.png` with `parameters`."""
    folder = outputs_dir / kind / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in folder.glob("*.png") if p.name[:5].isdigit()]
    index = max(numbers, default=-1) + 1
    while True:
        path = folder / f"{index:05d}-{seed}.png"
        try:
            with open(path, "xb") as f:
                _write_png(image, infotext, f)
            return path
        except FileExistsError:
            index += 1
