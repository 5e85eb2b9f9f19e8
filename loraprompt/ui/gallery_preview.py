"""Replace a card's preview with a generated image, as A1111's "Replace preview" button does: the
image the page shows (sent by the gallery's editor as a data URL) is written beside the LoRA as
`<stem>.png`, the first preview name every reader looks for, with its generation parameters.

A PNG is written byte for byte (its `parameters` chunk kept); a JPEG or WebP result (A1111's
samples_format) is converted to PNG with its infotext moved into a `parameters` chunk. The file is
written next to its final name and renamed over it, so a failure never leaves half a preview."""

from __future__ import annotations

import base64
import binascii
import io
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from loraprompt.files import temp_beside
from loraprompt.ui.gallery_service import BadRequest

if TYPE_CHECKING:
    from loraprompt.ui.gallery_service import GalleryService

MAX_IMAGE_BYTES = 48 * 1024 * 1024  # a 4096x4096 RGBA PNG of noise is about 64 MB; results are far smaller
MAX_PIXELS = 8192 * 8192
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode_data_url(value: object) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL (or of bare base64)."""
    if not isinstance(value, str) or not value:
        raise BadRequest("image must be a data URL of the image (data:image/png;base64,...)")
    head, sep, data = value.partition(",")
    if sep and not (head.startswith("data:") and head.endswith(";base64")):
        raise BadRequest(f"image: expected a base64 data URL, got {head[:40]!r}")
    if len(data if sep else value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise BadRequest(f"image: over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        return base64.b64decode(data if sep else value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"image: not valid base64 ({exc})") from exc


def preview_png(raw: bytes) -> bytes:
    """PNG bytes to write for an uploaded image: a PNG as it is, anything else PIL reads converted
    to PNG with its infotext (`parameters`); BadRequest naming what is wrong otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadRequest(f"image: {image.width}x{image.height} is over {MAX_PIXELS} pixels")
            if raw.startswith(PNG_MAGIC):
                image.verify()  # a truncated or corrupt PNG fails here, not in every gallery later
                return raw
            from loraprompt.infotext import image_infotext
            from loraprompt.ui.outputs import png_bytes

            infotext, _ = image_infotext(image)
            image.load()
            converted = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            return png_bytes(converted, infotext) if infotext else _plain_png(converted)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"image: not an image PIL can read ({exc})") from exc


def _plain_png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_preview(model_path: str, png: bytes) -> Path:
    """Write `png` as `<stem>.png` beside `model_path`, atomically (a temporary file in the same
    folder, renamed over the old preview); BadRequest naming the file when the folder is not
    writable."""
    model = Path(model_path)
    target = model.with_name(f"{model.stem}.png")
    tmp_name = None
    try:
        fd, tmp_name = temp_beside(target, ".png.tmp")  # readable as the old preview was (not 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(png)
            f.flush()
            os.fsync(f.fileno())
        if target.is_symlink():  # replace the link, never write through it into another folder
            target.unlink()
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise BadRequest(f"{target}: the preview was not written ({exc.strerror or exc})") from exc
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return target


def set_preview(service: GalleryService, card_id: object, image: object) -> dict[str, Any]:
    """The `/preview-image` route: write the image as the card's preview and return the card as
    the gallery now shows it, with the file written (relative to its root)."""
    entry = service.entry(card_id)
    if entry.offline:
        raise BadRequest(f"{entry.relpath}: its folder is offline; the preview was not written")
    png = preview_png(decode_data_url(image))
    target = write_preview(entry.path, png)
    service.library.refresh()  # the folder changed: the new preview is found as a scan finds it
    snap = service.snapshot()
    new_id = snap.ids.get(entry.path)
    if new_id is None:
        raise BadRequest(f"{entry.relpath}: the LoRA is gone from the library; its preview was written to {target}")
    return {"card": snap.record(snap.by_id[new_id]), "file": str(PurePosixPath(entry.relpath).with_name(target.name))}
