"""Small cached WebP thumbnails of preview images, keyed by path and the file's version (size,
mtime, inode, ctime: `hashes.file_version`)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loraprompt.library.hashes import Version, file_version

THUMB_SIZE = 256
MAX_PIXELS = 64_000_000  # larger images are refused before decoding (decompression bombs)
MAX_SOURCE_BYTES = 64 * 1024 * 1024


class ThumbnailError(ValueError):
    """The preview cannot be made into a thumbnail (not an image, too big, corrupt)."""


def version_tag(version: Version) -> str:
    """A `hashes.file_version` as text for thumbnail keys and URLs: it changes when the file is
    replaced, even by one of the same size with the old mtime kept (`rsync -a`, `cp -p`)."""
    return "{}.{}.{}.{}".format(*version)


def file_tag(path: str | os.PathLike[str]) -> str:
    """`version_tag` of the file at `path` as it is now (OSError when it cannot be stat'ed)."""
    return version_tag(file_version(os.stat(path)))


MAX_AGE_S = 30 * 86400  # a thumbnail not served for this long is deleted by `prune`
MAX_CACHE_BYTES = 1 << 30  # and the oldest go first while the cache is bigger than this
TOUCH_AFTER_S = 86400  # a served thumbnail's mtime (its "last served") is refreshed at most daily


class ThumbCache:
    """Thumbnails under `cache_dir`, made on first request and reused while the source is unchanged.
    A thumbnail's mtime says when it was last served; `prune` deletes those unused for a month (a
    replaced or deleted preview leaves its old thumbnail behind) and keeps the folder under a size
    cap. Galleries of other libraries may share the folder: age, not the current cards, decides."""

    def __init__(self, cache_dir: str | os.PathLike[str], size: int = THUMB_SIZE) -> None:
        self.cache_dir = Path(cache_dir)
        self.size = size

    def prune(self, max_age_s: float = MAX_AGE_S, max_bytes: int = MAX_CACHE_BYTES, now: float | None = None) -> int:
        """Delete thumbnails not served for `max_age_s`, then the least recently served while the
        rest is over `max_bytes`; returns how many were deleted. Other files are left alone."""
        now = time.time() if now is None else now
        found: list[tuple[float, int, Path]] = []
        try:
            subdirs = [d for d in self.cache_dir.iterdir() if len(d.name) == 2 and d.is_dir()]
        except OSError:
            return 0
        for sub in subdirs:
            try:
                with os.scandir(sub) as it:
                    for item in it:
                        if item.name.endswith((".webp", ".tmp")) and item.is_file():
                            st = item.stat()
                            found.append((st.st_mtime, st.st_size, Path(item.path)))
            except OSError:
                continue
        found.sort()
        total = sum(size for _, size, _ in found)
        deleted = 0
        for mtime, size, path in found:
            if now - mtime < max_age_s and total <= max_bytes:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            deleted += 1
        return deleted

    def _served(self, target: Path) -> Path:
        """Note that `target` was just served (its mtime, at most once a day) and return it."""
        try:
            if time.time() - target.stat().st_mtime > TOUCH_AFTER_S:
                os.utime(target)
        except OSError:
            pass
        return target

    def _cached(self, key: str) -> Path:
        # surrogatepass: a preview path that is not UTF-8 (lone surrogates) is a key like any other
        digest = hashlib.sha256(f"{key}\0{self.size}".encode("utf-8", "surrogatepass")).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest[2:34]}.webp"

    def path_for(self, source: Path) -> Path:
        """Where the thumbnail of `source` (as it is now) is kept."""
        return self._cached(f"{source}\0{file_tag(source)}")

    def thumbnail(self, source: Path) -> Path:
        """The cached thumbnail of `source`, made now when missing; ThumbnailError when it cannot be."""
        try:
            target = self.path_for(source)
            if not target.is_file() and source.stat().st_size > MAX_SOURCE_BYTES:
                raise ThumbnailError(f"{source}: preview larger than {MAX_SOURCE_BYTES // 2**20} MB")
        except OSError as exc:
            raise ThumbnailError(f"{source}: cannot read ({exc.strerror})") from exc
        return self._served(target) if target.is_file() else self._store(target, self._render(source, str(source)))

    def thumbnail_of(self, key: str, load: Callable[[], bytes], label: str) -> Path:
        """The cached thumbnail of the image bytes `load()` gives (called only when not cached),
        identified by `key` (e.g. a header's cover image)."""
        target = self._cached(key)
        if target.is_file():
            return self._served(target)
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
