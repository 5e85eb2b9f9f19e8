"""Small cached WebP thumbnails of preview images, keyed by (resolved path, mtime, size)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

THUMB_SIZE = 256
MAX_PIXELS = 64_000_000  # larger images are refused before decoding (decompression bombs)
MAX_SOURCE_BYTES = 64 * 1024 * 1024


class ThumbnailError(ValueError):
    """The preview cannot be made into a thumbnail (not an image, too big, corrupt)."""


class ThumbCache:
    """Thumbnails under `cache_dir`, made on first request and reused while the source is unchanged."""

    def __init__(self, cache_dir: str | os.PathLike[str], size: int = THUMB_SIZE) -> None:
        self.cache_dir = Path(cache_dir)
        self.size = size

    def path_for(self, source: Path) -> Path:
        """Where the thumbnail of `source` (as it is now) is kept."""
        st = source.stat()
        key = hashlib.sha256(f"{source}\0{st.st_mtime_ns}\0{st.st_size}\0{self.size}".encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key[2:34]}.webp"

    def thumbnail(self, source: Path) -> Path:
        """The cached thumbnail of `source`, made now when missing; ThumbnailError when it cannot be."""
        try:
            target = self.path_for(source)
        except OSError as exc:
            raise ThumbnailError(f"{source}: cannot read ({exc.strerror})") from exc
        if target.is_file():
            return target
        data = self._render(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def _render(self, source: Path) -> bytes:
        import io

        from PIL import Image, ImageOps, UnidentifiedImageError

        if source.stat().st_size > MAX_SOURCE_BYTES:
            raise ThumbnailError(f"{source}: preview larger than {MAX_SOURCE_BYTES // 2**20} MB")
        try:
            with Image.open(source) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise ThumbnailError(f"{source}: {width}x{height} pixels is more than a preview may have")
                im.draft("RGB", (self.size, self.size))
                frame = ImageOps.exif_transpose(im)
                frame = frame.convert("RGBA" if "A" in frame.getbands() or "transparency" in im.info else "RGB")
                frame.thumbnail((self.size, self.size))
                out = io.BytesIO()
                frame.save(out, "WEBP", quality=80, method=4)
                return out.getvalue()
        except ThumbnailError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
            raise ThumbnailError(f"{source}: not a readable image ({exc})") from exc
