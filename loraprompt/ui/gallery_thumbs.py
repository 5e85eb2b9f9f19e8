"""Small cached WebP thumbnails of preview images, keyed by (resolved path, mtime, size)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
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

    def _cached(self, key: str) -> Path:
        digest = hashlib.sha256(f"{key}\0{self.size}".encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest[2:34]}.webp"

    def path_for(self, source: Path) -> Path:
        """Where the thumbnail of `source` (as it is now) is kept."""
        st = source.stat()
        return self._cached(f"{source}\0{st.st_mtime_ns}\0{st.st_size}")

    def thumbnail(self, source: Path) -> Path:
        """The cached thumbnail of `source`, made now when missing; ThumbnailError when it cannot be."""
        try:
            target = self.path_for(source)
            if not target.is_file() and source.stat().st_size > MAX_SOURCE_BYTES:
                raise ThumbnailError(f"{source}: preview larger than {MAX_SOURCE_BYTES // 2**20} MB")
        except OSError as exc:
            raise ThumbnailError(f"{source}: cannot read ({exc.strerror})") from exc
        return target if target.is_file() else self._store(target, self._render(source, str(source)))

    def thumbnail_of(self, key: str, load: Callable[[], bytes], label: str) -> Path:
        """The cached thumbnail of the image bytes `load()` gives (called only when not cached),
        identified by `key` (e.g. a header's cover image)."""
        target = self._cached(key)
        if target.is_file():
            return target
        data = load()
        if len(data) > MAX_SOURCE_BYTES:
            raise ThumbnailError(f"{label}: image larger than {MAX_SOURCE_BYTES // 2**20} MB")
        return self._store(target, self._render(io.BytesIO(data), label))

    def _store(self, target: Path, data: bytes) -> Path:
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

    def _render(self, source: Path | io.BytesIO, label: str) -> bytes:
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(source) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise ThumbnailError(f"{label}: {width}x{height} pixels is more than a preview may have")
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
            raise ThumbnailError(f"{label}: not a readable image ({exc})") from exc
