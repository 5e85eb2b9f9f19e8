"""The library's on-disk cache: what was learned from each file, keyed by path and validated by
(size, mtime_ns). One JSON file per set of roots, written atomically and only when it changed."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loraprompt.library.sidecars import atomic_write_text

VERSION = 2  # 2: one family detector for the library and the reader (SD1 files with lora_te1_ keys)
# A file whose mtime is this close to when it was read may change again within the same
# timestamp tick (coarse filesystem clocks, FAT's 2 s): such a record is used once, then re-read.
RACY_NS = 2_000_000_000


def default_cache_dir() -> Path:
    """$LORAPROMPT_CACHE_DIR, else $XDG_CACHE_HOME/loraprompt, else ~/.cache/loraprompt."""
    if os.environ.get("LORAPROMPT_CACHE_DIR"):
        return Path(os.environ["LORAPROMPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loraprompt"


_WORDS = ("kind", "family", "family_source")  # a few distinct short values, repeated in every record


def _share_words(record: Any) -> None:
    """Make the record's repeated short strings one object each (100,000 records hold 300,000)."""
    if isinstance(record, dict):
        for key in _WORDS:
            value = record.get(key)
            if isinstance(value, str):
                record[key] = sys.intern(value)


class DiskCache:
    """Map path -> {"size", "mtime_ns", ...values}; a value is served only while the stat matches."""

    def __init__(self, cache_dir: Path | None, roots: list[str]) -> None:
        digest = hashlib.sha256("\0".join(sorted(roots)).encode()).hexdigest()[:16]
        self.path = cache_dir / f"library-{digest}.json" if cache_dir is not None else None
        self._files: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("files"), dict):
            self._files = doc["files"]
            for record in self._files.values():
                _share_words(record)

    def get(self, path: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
        """The cached record of `path` if its size and mtime still match, else None."""
        record = self._files.get(path)
        if record is None or record.get("size") != size or record.get("mtime_ns") != mtime_ns or record.get("racy"):
            return None
        return record

    def put(self, path: str, size: int, mtime_ns: int, **values: Any) -> dict[str, Any]:
        """Store values for `path` at this stat, replacing an older record (marked racy when the
        file was modified less than RACY_NS before now)."""
        record = {"size": size, "mtime_ns": mtime_ns, **values}
        _share_words(record)
        if abs(mtime_ns - time.time_ns()) < RACY_NS:
            record["racy"] = True
        with self._lock:
            self._files[path] = record
            self._dirty = True
        return record

    def update(self, path: str, **values: Any) -> None:
        """Add values to an existing record (e.g. hashes computed later)."""
        with self._lock:
            if path in self._files:
                self._files[path].update(values)
                self._dirty = True

    def drop(self, paths: set[str]) -> None:
        """Forget records of files that are gone."""
        with self._lock:
            for path in paths & self._files.keys():
                del self._files[path]
                self._dirty = True

    def paths(self) -> set[str]:
        """Every path with a record."""
        return set(self._files)

    def peek(self, path: str) -> dict[str, Any] | None:
        """The record of `path` whatever the file's stat is now (for files that are unreachable)."""
        return self._files.get(path)

    def save(self) -> None:
        """Write the cache if anything changed (atomic; a failure to write only loses the cache)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            text = json.dumps({"version": VERSION, "files": self._files}, ensure_ascii=False, separators=(",", ":"))
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)
        except OSError:
            self._dirty = True
