"""How often and when each LoRA was used in a generation, for "most used" and "last used" sorts.

Kept in its own small JSON file beside the scan cache (written atomically on every note), so
recording a generation never rewrites the big cache, and clearing the cache keeps the history."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from loraprompt.library.sidecars import atomic_write_text


class UsageLog:
    """path -> (uses, last use in ns since the epoch); in memory only when `path` is None."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._uses: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        if path is not None:
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                doc = {}
            if isinstance(doc, dict):
                for key, value in doc.items():
                    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
                        self._uses[key] = (value[0], value[1])

    def get(self, path: str) -> tuple[int, int]:
        """(uses, last use ns) of a file; (0, 0) when never used."""
        return self._uses.get(path, (0, 0))

    def note(self, paths: Iterable[str]) -> None:
        """Count one use of each file (a file named twice in one call counts once) and save;
        no files, no write."""
        used = set(paths)
        if not used:
            return
        now = time.time_ns()
        with self._lock:
            for p in used:
                count, _ = self._uses.get(p, (0, 0))
                self._uses[p] = (count + 1, now)
            text = json.dumps({k: list(v) for k, v in self._uses.items()}, ensure_ascii=False)
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, text)
            except OSError:
                pass  # history is a convenience: a read-only cache folder must not break generation
