"""What a `Library` knows of its files' contents: hashes (A1111's, AutoV2, sha256; cached per file
version), duplicate groups, and the usage history kept by content hash. `Contents` is a mixin of
`loraprompt.library.library.Library`, which owns the state it uses (its cache, index and entries)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loraprompt.errors import AdapterFileError
from loraprompt.library.duplicates import DuplicateGroup, duplicate_candidates, find_duplicates, sample_hash
from loraprompt.library.entry import Entry
from loraprompt.library.hashes import file_hashes, file_version
from loraprompt.library.resolve import hash_matches, is_hash

if TYPE_CHECKING:
    from loraprompt.library.cache import DiskCache
    from loraprompt.library.hashes import HashCache, Version
    from loraprompt.library.resolve import NameIndex
    from loraprompt.library.usage import UsageLog

_NO_RECORD: Mapping[str, Any] = {}


class Contents:
    """Hashes, duplicates and usage of `Library` (see its docstring)."""

    _cache: DiskCache
    _hash_cache: HashCache
    _computed: dict[str, tuple[Version, str]]
    _index: NameIndex
    _by_path: dict[str, Entry]
    _usage: UsageLog

    if TYPE_CHECKING:
        @property
        def entries(self) -> list[Entry]: ...

    # ---- hashes ---------------------------------------------------------------------------
    def hashes(self, entry: Entry, compute: bool = True, *, save: bool = True) -> dict[str, str | None]:
        """`file_hashes` of the file as it is now, from the cache while the file is the version
        (`file_version`) they were computed for; a newly computed value is written to the on-disk
        cache unless `save` is False. {} when the file is gone (or, with `compute` False, not
        hashed yet); AdapterFileError, naming the file, when it cannot be hashed as safetensors
        (an entry with an `error`)."""
        path = entry.path
        try:
            version = file_version(os.stat(path))
        except OSError:
            return {}
        record = self._cache.get(path, *version)
        if record is not None and record.get("hashes"):
            return dict(record["hashes"])
        if not compute:
            return {}
        value = file_hashes(path, cache=self._hash_cache)
        stable = file_version(os.stat(path)) == version
        if stable and value.get("a1111"):
            self._computed[path] = (version, str(value["a1111"]))
        if record is not None and stable:
            self._cache.update(path, hashes=value)
            if save:
                self._cache.save()
        return value

    def find_by_hash(self, wanted: str, compute: bool = True) -> list[Entry]:
        """Entries whose hash matches `wanted` (A1111 short, AutoV2 prefix or full sha256): hashes
        already known, then files whose header claims it (verified), then, with `compute`, every
        other file (may read the whole library; compute=False is A1111's known-hashes-only way).
        A `wanted` that is not a str raises TypeError naming it."""
        if not isinstance(wanted, str):
            raise TypeError(f"wanted must be a str, not {type(wanted).__name__}")
        w = wanted.strip().lower()
        if not is_hash(w):  # nothing can match: read no file ('' claimed every header's hash)
            return []
        entries = self.entries
        found = [e for e in entries if hash_matches(self.hashes(e, compute=False), w)]
        if not found:
            # kohya writes the tensor hash's hex digits, LyCORIS the same with "0x" in front
            claimed = [e for e in entries if (e.summary.sshs_model_hash or "").lower().removeprefix("0x").startswith(w[:10])]
            found = [e for e in claimed if hash_matches(self._readable_hashes(e), w)]
        if not found and compute:
            found = [e for e in entries if not e.offline and not e.error and hash_matches(self._readable_hashes(e), w)]
        self._cache.save()
        return found

    def _readable_hashes(self, entry: Entry) -> dict[str, str | None]:
        """`hashes` (not saved yet), or {} when the file cannot be hashed now (changed since the
        scan, e.g. half overwritten, or gone): a lookup skips it instead of failing on its error."""
        try:
            return self.hashes(entry, save=False)
        except (AdapterFileError, OSError):
            return {}

    def duplicate_candidates(self) -> list[Entry]:
        """Entries that can be in a duplicate group (see `duplicates.duplicate_candidates`)."""
        return duplicate_candidates(self.entries, self._index.stems)

    def duplicates(
        self, progress: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of duplicate files; only `duplicate_candidates` are hashed (`find_duplicates`)."""
        return find_duplicates(
            self.duplicate_candidates(), self._index.stems,
            lambda e: (self._cache.get(e.path, *e.version) or _NO_RECORD).get("hashes") or {},
            lambda e: self.hashes(e, save=False), self._cache.save, progress=progress, stop=stop, sample=self._sample)

    def _sample(self, entry: Entry) -> str | None:
        """`duplicates.sample_hash` of the file, kept in the cache record while the file is the
        entry's version; None when the file cannot be read."""
        record = self._cache.get(entry.path, *entry.version)
        if record is not None and record.get("sample"):
            return str(record["sample"])
        try:
            value = sample_hash(entry.path, entry.data_offset or 0)
            st = os.stat(entry.path)
        except OSError:
            return None
        if record is not None and file_version(st) == entry.version:
            self._cache.update(entry.path, sample=value)
        return value

    # ---- usage ---------------------------------------------------------------------------
    def note_use(self, entries: Iterable[Entry | str]) -> None:
        """Record that these entries (or file paths) were used in one generation; the history is
        kept by the files' content hash (computed if not known yet; a generation computes it for
        `Lora hashes` anyway), so a renamed file keeps it. Unreadable files are left out."""
        used: list[tuple[str, str, Version]] = []
        for e in entries:
            path = e.path if isinstance(e, Entry) else os.path.abspath(e)
            entry = self._by_path.get(path)
            try:
                version = file_version(os.stat(path))
                hashes = self.hashes(entry) if entry is not None else file_hashes(path, cache=self._hash_cache)
            except (AdapterFileError, OSError):
                continue
            if hashes.get("a1111"):
                used.append((str(hashes["a1111"]), path, version))
        self._usage.note(used)

    def known_hash(self, entry: Entry) -> str | None:
        """The content (A1111 tensor) hash of `entry` if it was computed for this version of the
        file; never reads or stats the file."""
        record = self._cache.get(entry.path, *entry.version)
        hashes = record.get("hashes") if record is not None else None
        if hashes:
            return hashes.get("a1111")
        computed = self._computed.get(entry.path)  # e.g. a file too new for the disk cache to keep
        return computed[1] if computed is not None and computed[0] == entry.version else None

    def usage(self, entry: Entry) -> tuple[int, int]:
        """(times used, last use in ns since the epoch) of `entry`; (0, 0) when never used."""
        content = self.known_hash(entry) or self._usage.hash_at(entry.path, entry.version)
        return self._usage.get(content, entry.path)

    @property
    def usage_stamp(self) -> int:
        """A number that changes whenever the usage history does."""
        return self._usage.stamp

    def migrate_usage(self) -> int:
        """Move history kept by path (written before it was kept by content) to the files' hashes,
        hashing those files now; returns how many moved. Files not in the library stay as they are,
        and so does the history of a file that cannot be hashed now (changed since the scan, e.g.
        half overwritten): it moves once the file is whole again, and the others move anyway."""
        moved = 0
        for path in self._usage.legacy_paths():
            entry = self._by_path.get(path)
            if entry is None or entry.offline or entry.error:
                continue
            content = self._readable_hashes(entry).get("a1111")
            if content:
                self._usage.migrate(path, str(content))
                moved += 1
        self._cache.save()
        return moved
