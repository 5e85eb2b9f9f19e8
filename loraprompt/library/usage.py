"""How often and when each LoRA was used in a generation, for "most used" and "last used" sorts.

Kept by content (the A1111 tensor hash, which a generation computes anyway for `Lora hashes`), so
renaming or moving a file keeps its history; in its own small JSON file beside the scan cache
(written atomically on every note), so recording a generation never rewrites the big cache, and
clearing the cache keeps the history.

History written before it was kept by content (keyed by path) is read as it is and moves to the
file's hash as soon as that hash is known (`migrate`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loraprompt.library.hashes import Version
from loraprompt.library.sidecars import atomic_write_text

VERSION = 2


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value[0], value[1]
    return None


class UsageLog:
    """content hash -> (uses, last use in ns since the epoch), plus path-keyed history from before
    (version 1 files) not yet moved to a hash; in memory only when `path` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._by_hash: dict[str, tuple[int, int]] = {}
        self._by_path: dict[str, tuple[int, int]] = {}  # version 1 history, until its file's hash is known
        # path -> (size, mtime_ns, hash, ino, ctime_ns) of files noted (ino, ctime_ns: None when noted
        # before they were kept: then size and mtime alone say whether it is the same file)
        self._seen: dict[str, tuple[int, int, str, int | None, int | None]] = {}
        self._lock = threading.Lock()
        self.stamp = 0  # changes whenever the history does
        if path is None:
            return
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return
        if not isinstance(doc, dict):
            return
        if doc.get("version") == VERSION:
            for target, key in ((self._by_hash, "by_hash"), (self._by_path, "by_path")):
                section = doc.get(key)
                for name, value in (section.items() if isinstance(section, dict) else ()):
                    pair = _pair(value)
                    if pair is not None:
                        target[str(name)] = pair
            seen = doc.get("seen")
            for name, value in (seen.items() if isinstance(seen, dict) else ()):
                if isinstance(value, list) and len(value) in (3, 5) and isinstance(value[2], str) and _pair(value[:2]):
                    ino, ctime_ns = _pair(value[3:]) or (None, None)
                    self._seen[str(name)] = (value[0], value[1], value[2], ino, ctime_ns)
        else:  # version 1: {path: [uses, last_ns]}
            for name, value in doc.items():
                pair = _pair(value)
                if pair is not None:
                    self._by_path[name] = pair

    def get(self, content_hash: str | None, path: str) -> tuple[int, int]:
        """(uses, last use ns) of the file with this hash (None: not known yet) at `path`; (0, 0)
        when never used."""
        if content_hash is not None:
            found = self._by_hash.get(content_hash)
            if found is not None:
                return found
        return self._by_path.get(path, (0, 0))

    def hash_at(self, path: str, version: Version) -> str | None:
        """The hash of the file noted at `path` when it is still that version (`hashes.file_version`:
        a file replaced with its size and mtime kept is another)."""
        seen = self._seen.get(path)
        if seen is None or seen[:2] != version[:2] or (seen[3] is not None and seen[3:] != version[2:]):
            return None
        return seen[2]

    def legacy_paths(self) -> list[str]:
        """Paths whose history is still kept by path (their hash was not known yet)."""
        return list(self._by_path)

    def migrate(self, path: str, content_hash: str) -> None:
        """Move the path-keyed history of `path` to its file's hash (added to what the hash has)."""
        with self._lock:
            old = self._by_path.pop(path, None)
            if old is None:
                return
            count, last = self._by_hash.get(content_hash, (0, 0))
            self._by_hash[content_hash] = (count + old[0], max(last, old[1]))
            self.stamp += 1
            text = self._text()
        self._write(text)

    def note(self, used: Iterable[tuple[str, str, Version]]) -> None:
        """Count one use of each (content hash, path, file version) (the same content twice in one
        call counts once) and save; no files, no write."""
        files = {u[0]: u for u in used}
        if not files:
            return
        now = time.time_ns()
        with self._lock:
            for content_hash, path, (size, mtime_ns, ino, ctime_ns) in files.values():
                count, _ = self._by_hash.get(content_hash, (0, 0))
                old = self._by_path.pop(path, (0, 0))
                self._by_hash[content_hash] = (count + old[0] + 1, now)
                self._seen[path] = (size, mtime_ns, content_hash, ino, ctime_ns)
            self.stamp += 1
            text = self._text()
        self._write(text)

    def _text(self) -> str:
        return json.dumps({"version": VERSION, "by_hash": {k: list(v) for k, v in self._by_hash.items()},
                           "by_path": {k: list(v) for k, v in self._by_path.items()},
                           "seen": {k: list(v) for k, v in self._seen.items()}}, ensure_ascii=False)

    def _write(self, text: str) -> None:
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, text, json_text=True)
            except OSError:
                pass  # history is a convenience: a read-only cache folder must not break generation
