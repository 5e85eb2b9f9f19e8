"""The library's on-disk cache: what was learned from each file, keyed by path and validated by
the file's version (size, mtime_ns, inode, ctime_ns: `hashes.file_version`), and the device of each
folder a drive is mounted on (`mounts`: an optional key, so no new version; absent, nothing is
known yet). One JSON file per set of roots, written atomically and only when it changed."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraprompt.library.sidecars import atomic_write_text

VERSION = 6  # 6: output_name is ss_output_name only (5 took modelspec.title when it was missing: `_from_5`); 5: rows hold the inode and ctime of every file (a file replaced with its size and mtime kept is read again); 4: summaries with " and ` swapped (entry.SUMMARY_SWAP); 3: records are rows (lists), not objects; 2: one family detector (SD1 files with lora_te1_ keys)
# A file whose mtime is this close to when it was read may change again within the same
# timestamp tick (coarse filesystem clocks, FAT's 2 s): such a record is used once, then re-read.
RACY_NS = 2_000_000_000


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block without the cyclic garbage collector (re-enabled after the last of nested or
    concurrent blocks, if it was on). A scan allocates ~10 container objects per file and frees
    few: at 100,000 files the collector's passes over the growing heap took ~15% of a warm scan
    and found nothing to collect (reference counting frees the scan's garbage); what it made is
    handed to the oldest generation at the end."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                if gc.get_freeze_count() == 0:
                    # what the block allocated is all in the youngest generation, which the first
                    # allocation after enable() would traverse (~0.1 s at 100,000 files). freeze()
                    # then unfreeze() moves every tracked object to the oldest generation in O(1):
                    # full collections still see them. Not done when the host froze objects itself
                    # (a pre-fork server keeping pages shared): unfreeze() would release those.
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()


def default_cache_dir() -> Path:
    """$LORAPROMPT_CACHE_DIR, else $XDG_CACHE_HOME/loraprompt, else ~/.cache/loraprompt."""
    if os.environ.get("LORAPROMPT_CACHE_DIR"):
        return Path(os.environ["LORAPROMPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loraprompt"


# A record is a row: [size, mtime_ns, extras, ino, ctime_ns, *COLUMNS] where extras is None or a
# dict of the rare values (hashes, sidecar, error, racy, ...); size, mtime_ns, ino and ctime_ns are
# the file version the record is valid for. A model file's record has every column, a sidecar's
# none. A list of 13 is ~160 bytes where a dict of the same values was ~650: 100,000 records
# held 126 MiB as dicts.
COLUMNS = ("kind", "summary", "output_name", "family", "family_source", "data_offset", "tensors")
BASE = 5  # the length of a row without columns
_AT = {"size": 0, "mtime_ns": 1, "ino": 3, "ctime_ns": 4, **{name: i + BASE for i, name in enumerate(COLUMNS)}}
_WORDS = (_AT["kind"], _AT["family"], _AT["family_source"])  # a few distinct short values in every record


_NO_EXTRAS: dict[str, Any] = {}
# what `in_order` is saved as: the order `arrange` was given (scanner.walk_key). A cache saved in
# another order (`true`: relpaths natural-sorted, before A1111's folder-then-file walk order) is
# sorted again once.
ORDER = "a1111-walk"


class Record(Mapping[str, Any]):
    """A read-only dict-like view of one cache row (what `get`, `put` and `peek` return)."""

    __slots__ = ("_row",)

    def __init__(self, row: list[Any]) -> None:
        self._row = row

    def __getitem__(self, key: str) -> Any:
        row = self._row
        at = _AT.get(key)
        if at is not None:
            if at < len(row):
                return row[at]
            raise KeyError(key)
        extras = row[2]
        if extras is None:
            raise KeyError(key)
        return extras[key]

    def get(self, key: str, default: Any = None) -> Any:
        row = self._row
        at = _AT.get(key)
        if at is not None:
            return row[at] if at < len(row) else default
        extras = row[2]
        return default if extras is None else extras.get(key, default)

    def header_values(self) -> tuple[Any, ...]:
        """(size, mtime_ns, ino, ctime_ns, kind, summary, output_name, family, family_source,
        data_offset, error, family_conflict) in one call: what an entry is made of (100,000 times in
        a warm scan)."""
        row = self._row
        extras = row[2] or _NO_EXTRAS
        if len(row) == BASE:
            return (row[0], row[1], row[3], row[4], None, None, None, None, None, None, extras.get("error"),
                    extras.get("family_conflict"))
        size, mtime_ns, _, ino, ctime_ns, kind, summary, output_name, family, family_source, data_offset, _ = row
        return (size, mtime_ns, ino, ctime_ns, kind, summary, output_name, family, family_source, data_offset,
                extras.get("error"), extras.get("family_conflict"))

    def __iter__(self) -> Iterator[str]:
        row = self._row
        yield from (key for key, at in _AT.items() if at < len(row))
        yield from row[2] or ()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _row(size: int, mtime_ns: int, ino: int, ctime_ns: int, values: Mapping[str, Any]) -> list[Any]:
    """The row of a record of this file version with these values."""
    extras = {k: v for k, v in values.items() if k not in _AT}
    if any(name in values for name in COLUMNS):
        row: list[Any] = [size, mtime_ns, extras or None, ino, ctime_ns, *(values.get(name) for name in COLUMNS)]
        for at in _WORDS:
            word = row[at]
            if isinstance(word, str):
                row[at] = sys.intern(word)
        return row
    return [size, mtime_ns, extras or None, ino, ctime_ns]


def _from_5(files: dict[str, list[Any]]) -> None:
    """Version 5 made a header's `modelspec.title` its output name (the alias) when it had no
    `ss_output_name`: the rows that may hold such a title (an output name and a title in the
    summary) are marked racy, so their files are read again once; the others, and their hashes,
    stay."""
    name_at, summary_at = _AT["output_name"], _AT["summary"]
    for row in files.values():
        if len(row) > BASE and row[name_at] is not None and "title" in str(row[summary_at]):
            row[2] = {**(row[2] or {}), "racy": True}


def _valid(row: Any) -> bool:
    return (isinstance(row, list) and len(row) in (BASE, BASE + len(COLUMNS)) and type(row[0]) is int and type(row[1]) is int
            and (row[2] is None or isinstance(row[2], dict)) and type(row[3]) is int and type(row[4]) is int)


class DiskCache:
    """Map path -> record of values ("size", "mtime_ns", ...); a record is served only while the
    file's version (size, mtime_ns, ino, ctime_ns from one stat) matches."""

    def __init__(self, cache_dir: Path | None, roots: list[str]) -> None:
        digest = hashlib.sha256("\0".join(sorted(roots)).encode()).hexdigest()[:16]
        self.path = cache_dir / f"library-{digest}.json" if cache_dir is not None else None
        self._files: dict[str, list[Any]] = {}
        self._dirty = False
        self.in_order = False  # the records of the entries are in the entries' order (see `arrange`)
        self.mounts: dict[str, int] = {}  # folder a drive was mounted on -> that drive's st_dev (`folders.mount_change`)
        self._lock = threading.Lock()
        with paused_gc():
            self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_bytes().decode("utf-8"))  # no newline translation: 100 MB at 100,000 files
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("version") in (5, VERSION) and isinstance(doc.get("files"), dict):
            files = doc["files"]
            if not all(map(_valid, files.values())):
                return  # written by hand or by another program: rebuilt
            if doc["version"] == 5:
                _from_5(files)
            intern = sys.intern
            for row in files.values():
                if len(row) > BASE:
                    for at in _WORDS:
                        if type(row[at]) is str:
                            row[at] = intern(row[at])
            self._files = files
            self.in_order = doc.get("in_order") == ORDER
            mounts = doc.get("mounts")  # absent from caches written before it was kept: nothing known yet
            if isinstance(mounts, dict) and all(type(v) is int for v in mounts.values()):
                self.mounts = mounts

    def get(self, path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int) -> Record | None:
        """The cached record of `path` if the file is still that version (its size, mtime, inode
        and ctime match: `hashes.file_version`), else None."""
        row = self._files.get(path)
        if (row is None or row[0] != size or row[1] != mtime_ns or row[3] != ino or row[4] != ctime_ns
                or (row[2] is not None and row[2].get("racy"))):
            return None
        return Record(row)

    def put(self, path: str, size: int, mtime_ns: int, ino: int, ctime_ns: int, **values: Any) -> Record:
        """Store values for `path` at this file version, replacing an older record (marked racy when
        the file was modified less than RACY_NS before now)."""
        if abs(mtime_ns - time.time_ns()) < RACY_NS:
            values["racy"] = True
        row = _row(size, mtime_ns, ino, ctime_ns, values)
        with self._lock:
            if path not in self._files:
                self.in_order = False  # a new record at the end: not in the entries' order
            self._files[path] = row
            self._dirty = True
        return Record(row)

    @staticmethod
    def unkept(size: int, mtime_ns: int, ino: int, ctime_ns: int, **values: Any) -> Record:
        """A record of these values that is not stored (what a read that failed with an OSError
        learned: the next scan reads the file again)."""
        return Record(_row(size, mtime_ns, ino, ctime_ns, values))

    def update(self, path: str, **values: Any) -> None:
        """Add values to an existing record (e.g. hashes computed later)."""
        with self._lock:
            row = self._files.get(path)
            if row is not None:
                self._files[path] = _row(row[0], row[1], row[3], row[4], {**Record(row), **values})
                self._dirty = True

    def drop(self, paths: set[str]) -> None:
        """Forget records of files that are gone."""
        with self._lock:
            for path in paths & self._files.keys():
                del self._files[path]
                self._dirty = True

    def arrange(self, paths: list[str]) -> None:
        """Put the records of `paths` first, in that order (the scan's entries, natural-sorted),
        to be saved so: the next warm scan sorts its entries by `ranks` instead of computing 100,000
        natural sort keys. Marks the cache changed only when it was not in order."""
        with self._lock:
            if self.in_order and not self._dirty:
                return
            files = {p: self._files[p] for p in paths if p in self._files}
            files.update(self._files)
            self._files = files
            self.in_order = self._dirty = True

    def ranks(self) -> dict[str, int] | None:
        """path -> position of its record, when the records are in the entries' order; else None."""
        with self._lock:
            return {p: i for i, p in enumerate(self._files)} if self.in_order else None

    def set_mounts(self, mounts: dict[str, int]) -> None:
        """Keep the mount points the scan found (saved with the records, read by the next scan)."""
        with self._lock:
            if mounts != self.mounts:
                self.mounts = dict(mounts)
                self._dirty = True

    def __len__(self) -> int:
        """How many records it holds (model files and sidecars)."""
        return len(self._files)

    def paths(self) -> set[str]:
        """Every path with a record."""
        return set(self._files)

    def peek(self, path: str) -> Record | None:
        """The record of `path` whatever the file's stat is now (for files that are unreachable)."""
        row = self._files.get(path)
        return Record(row) if row is not None else None

    def save(self) -> None:
        """Write the cache if anything changed (atomic; a failure to write only loses the cache)."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            text = json.dumps({"version": VERSION, "in_order": ORDER if self.in_order else False, "mounts": self.mounts, "files": self._files}, ensure_ascii=False,
                              separators=(",", ":"))
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text, json_text=True)
        except OSError:
            self._dirty = True
