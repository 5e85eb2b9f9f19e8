"""`Library`: the catalog of LoRA files under one or more folders (no torch, no gradio)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import AdapterFileError, LoraPromptError
from loraprompt.library import paths, sidecars
from loraprompt.library.cache import RACY_NS, DiskCache, default_cache_dir, paused_gc
from loraprompt.library.contents import Contents
from loraprompt.library.details import file_details
from loraprompt.library.entry import Entry
from loraprompt.library.folders import distinct_roots, listing_error, mounted_again
from loraprompt.library.hashes import HashCache, Version, file_version
from loraprompt.library.order import entry_key
from loraprompt.library.resolve import (
    NameIndex,
    Resolution,
    hash_matches,
    match_exact,
    match_lenient,
    not_found,
    stand_in_name,
)
from loraprompt.library.scanner import (
    RefreshReport,
    ScanResult,
    cached_entries,
    folder_of,
    offline_entries,
    scan_file,
    scan_root,
    settled,
)
from loraprompt.library.usage import UsageLog


class Library(Contents):
    """LoRA files under `dirs`, scanned recursively, with an on-disk cache in `cache_dir`
    (default: `default_cache_dir()`; `persist=False` keeps it in memory only).

    `entries` re-checks the folders' mtimes at most every `auto_check_s` seconds and refreshes
    when one changed. A broken file modified less than `settle_s` ago is treated as still being
    written and skipped until it settles. `workers`: processes reading the headers of a cold
    scan (None: one per CPU once thousands are new, `readers.worker_count`; 0: none).
    """

    def __init__(
        self,
        dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        persist: bool = True,
        settle_s: float = 5.0,
        auto_check_s: float = 2.0,
        workers: int | None = None,
    ) -> None:
        dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
        for d in dirs:  # a missing folder is offline (an unplugged drive); a file is a mistake
            if os.path.isfile(d):
                raise ValueError(f"{os.path.abspath(d)}: a LoRA folder is expected here, not a file")
        self.roots = distinct_roots(dirs)
        where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._cache = DiskCache(where if persist else None, [str(r) for r in self.roots])
        self._usage = UsageLog(self._cache.path.with_name("usage-" + self._cache.path.name) if self._cache.path else None)
        self._hash_cache = HashCache()
        self._computed: dict[str, tuple[Version, str]] = {}  # path -> (file version, a1111) hashed here
        self.settle_s = settle_s
        self.auto_check_s = auto_check_s
        self.workers = workers
        self._lock = threading.RLock()
        self._entries: list[Entry] = []
        self._by_path: dict[str, Entry] = {}
        self._dir_mtimes: dict[str, int] = {}
        self._offline: set[str] = set()
        self._marks: dict[str, Any] = {}  # path -> the sidecars and previews its entry was made with
        self._watched: dict[str, Version] = {}  # `<stem>.json` sidecar -> its `file_version` when scanned
        self._index = NameIndex([])
        self._allowed: frozenset[Path] = frozenset()
        self._checked_at = 0.0
        self._scanned_ns = 0
        self.version = 0  # goes up whenever the entries change (see `changed_since`)
        self.last_report = RefreshReport()
        self.last_report = self.refresh()

    # ---- scanning -------------------------------------------------------------------------
    @property
    def entries(self) -> list[Entry]:
        """Every file found, in A1111's walk order (after a cheap automatic staleness check)."""
        self._auto_check()
        return list(self._entries)

    def refresh(self) -> RefreshReport:
        """Rescan every root; reads only files whose version (size, mtime, inode, ctime) changed
        since the cache."""
        with self._lock, paused_gc():
            scan_started = time.time_ns()
            old = dict(self._by_path)
            entries: list[Entry] = []
            dir_mtimes: dict[str, int] = {}
            pending: list[str] = []
            offline: list[str] = []
            links: list[str] = []  # dangling symlinks in reachable roots: offline places
            not_files: list[str] = []
            unreadable: list[str] = []  # folders that cannot be listed now: offline places too
            unmounted: list[str] = []  # plain folders a drive was mounted on, now without it: offline places too
            mounts: dict[str, int] = {}  # mount point -> its drive's st_dev, kept in the cache for the next scan
            read = 0
            marks: dict[str, Any] = {}
            seen: set[str] = set()
            walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every folder walked: a real folder once, whatever root
            linked: set[str] = set()
            ranks = self._cache.ranks()
            for root in self.roots:
                if not root.is_dir():
                    offline.append(str(root))
                    kept = [replace(e, offline=True) for e in old.values() if e.root == str(root)]
                    entries += kept or cached_entries(str(root), self._cache)
                    continue
                result = scan_root(str(root), self._cache, self.settle_s, old, self._marks, ranks=ranks, workers=self.workers,
                                   walked=walked, known_mounts=self._cache.mounts)
                if result.offline or result.unreadable or result.unmounted:
                    places = result.offline + result.unreadable + result.unmounted
                    result.entries = sorted(result.entries + offline_entries(str(root), places, old, self._cache), key=entry_key)
                    links += result.offline
                    unreadable += result.unreadable
                    unmounted += result.unmounted
                mounts.update(result.mounts)
                not_files += result.not_files
                marks.update(result.marks)
                seen |= result.sidecars_seen
                linked |= result.linked_previews
                entries += result.entries
                dir_mtimes.update(result.dir_mtimes)
                pending += result.pending
                read += result.read
            self._install(entries)
            self._allowed = frozenset(Path(p) for p in linked)
            self._dir_mtimes, self._offline, self._marks = dir_mtimes, {*offline, *links}, marks
            self._watched = _json_sidecars(marks)
            self._checked_at = time.monotonic()
            self._scanned_ns = scan_started
            gone = {p for p in old if p not in self._by_path} - set(pending)
            unseen = self._cache.paths() - self._by_path.keys() - seen
            live = tuple(os.path.join(str(r), "") for r in self.roots if str(r) not in self._offline)
            away = tuple(os.path.join(p, "") for p in (*links, *unreadable, *unmounted))
            dropped = {p for p in unseen if p.startswith(live) and p not in links and not p.startswith(away)}  # gone from a reachable place
            self._keep_hashes_of_moved(dropped, [p for p in self._by_path if p not in old])
            self._cache.drop(dropped)
            self._cache.set_mounts(mounts)
            self._cache.arrange(list(self._by_path))
            self._cache.save()
            changed = tuple(p for p, e in self._by_path.items() if p in old and old[p] is not e and old[p].version != e.version)
            for path in set(not_files).difference(self.last_report.not_files):
                logging.getLogger("loraprompt").warning("%s: not a regular file (a FIFO, socket or device); left out of the "
                                                        "LoRA library, never opened", path)
            for path in set(unreadable).difference(self.last_report.unreadable):
                logging.getLogger("loraprompt").warning("%s: this folder cannot be listed (%s); its LoRAs are kept from the "
                                                        "last scan, offline", path, listing_error(path))
            self.last_report = RefreshReport(
                added=tuple(p for p in self._by_path if p not in old),
                changed=changed,
                removed=tuple(sorted(gone)),
                pending=tuple(pending),
                offline_roots=tuple(offline),
                offline_links=tuple(links),
                not_files=tuple(not_files),
                unreadable=tuple(unreadable),
                files_read=read,
                unmounted=tuple(unmounted),
            )
            return self.last_report

    def _keep_hashes_of_moved(self, dropped: set[str], added: list[str]) -> None:
        """A file renamed or moved keeps its inode, size and mtime: give its new path the hashes
        already computed for the old one (usage history and duplicate groups go by hash)."""
        moved: dict[tuple[Any, ...], dict[str, Any]] = {}
        for path in dropped:
            record = self._cache.peek(path)
            if record and record.get("hashes") and record.get("ino") is not None:
                moved[(record["ino"], record["size"], record["mtime_ns"])] = record["hashes"]
        for path in added if moved else ():
            record = self._cache.peek(path)
            if record and not record.get("hashes"):
                hashes = moved.get((record.get("ino"), record["size"], record["mtime_ns"]))
                if hashes is not None:
                    self._cache.update(path, hashes=hashes)

    def _install(self, entries: list[Entry]) -> None:
        self._entries = entries
        self._by_path = {e.path: e for e in entries}
        self._index = NameIndex(entries)
        self.version += 1

    def current_version(self) -> int:
        """`version` after the cheap automatic staleness check that `entries` makes: compare it with
        a version seen before to learn whether anything changed without copying the entries."""
        self._auto_check()
        return self.version

    def is_stale(self) -> bool:
        """True when a scanned folder's mtime changed, one vanished, an offline root, link or folder came back, a
        file still being written at the scan has settled, or
        a `<stem>.json` sidecar was rewritten in place (one stat per folder and per such sidecar:
        A1111's metadata editor and other tools rewrite those files without touching the folder;
        edits inside a model file are caught when it is resolved or refreshed)."""
        for path, mtime_ns in self._dir_mtimes.items():
            try:
                if os.stat(path).st_mtime_ns != mtime_ns or abs(mtime_ns - self._scanned_ns) < RACY_NS:
                    return True
            except OSError:
                return True
        for path, version in self._watched.items():
            try:
                st = os.stat(path)
            except OSError:
                return True
            # a rewrite that puts the old size and mtime back (`cp -p`) still moves the ctime
            if file_version(st) != version or abs(version[1] - self._scanned_ns) < RACY_NS:
                return True
        return (any(os.path.exists(r) for r in self._offline) or any(listing_error(p) is None for p in self.last_report.unreadable)
                or any(mounted_again(p) for p in self.last_report.unmounted)
                or any(settled(p, self.settle_s) for p in self.last_report.pending))  # a copy that finished

    def _auto_check(self) -> None:
        if time.monotonic() - self._checked_at < self.auto_check_s:
            return
        self._checked_at = time.monotonic()
        if self.is_stale():
            self.refresh()

    def get(self, path: str | os.PathLike[str]) -> Entry | None:
        """The entry of an absolute file path, or None."""
        return self._by_path.get(os.path.abspath(path))

    def fresh(self, entry: Entry) -> Entry | None:
        """`entry` as the file is now: re-read when its version (size, mtime, inode, ctime) changed;
        None if it is gone."""
        try:
            st = os.stat(entry.path)
        except OSError:
            return None if not entry.offline else entry
        if file_version(st) == entry.version:
            return entry
        with self._lock:
            result = ScanResult()
            folder = folder_of(entry.path, entry.root)
            new = scan_file(entry.root, folder, os.path.basename(entry.path), cache=self._cache, settle_s=0.0, previous={}, marks={},
                            result=result)
            if new is None:
                return None
            self._marks.pop(entry.path, None)
            self._marks.update(result.marks)
            self._install([new if e.path == entry.path else e for e in self._entries])
            self._cache.save()
            return new

    # ---- names ----------------------------------------------------------------------------
    def display_name(self, entry: Entry, prefer_filename: bool = False) -> str:
        """The name a card inserts, as A1111 does: the alias unless it is forbidden or A1111's
        `lora_preferred_name` option says "Filename" (`prefer_filename`), else the stem."""
        return entry.name if prefer_filename else self._index.display_name(entry)

    def aliases(self) -> Mapping[str, Entry]:
        """Aliases a tag may use (A1111's rules: not shared, not another file's stem), to their entry."""
        return self._index.aliases

    def resolve(self, name: str, *, hash: str | None = None, profile: str = "loraprompt") -> Resolution:
        """The entry a tag's name (and optional `hash=`) means; see spec/syntax.md section 4.7.
        Rescans when nothing matched and a folder changed (A1111 rescans on a miss); the entry
        returned is fresh. A `name` that is not a str, or a `hash` that is neither a str nor None,
        raises TypeError naming it; an unknown `profile`, ValueError."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if hash is not None and not isinstance(hash, str):
            raise TypeError(f"hash must be a str or None, not {type(hash).__name__}")
        if profile not in ("loraprompt", "a1111"):  # parse's profiles: another would silently mean loraprompt's
            raise ValueError(f"unknown profile {profile!r}; use 'loraprompt' or 'a1111'")
        if not name.strip() and not hash:
            return Resolution(None, (Diagnostic("E-NAME-EMPTY", "LoRA name is empty", severity="error", subject=name),))
        self._auto_check()
        result = self._resolve_once(name, hash, profile)
        if (result is None or (result.entry is None and not result.candidates)) and self.is_stale():
            self.refresh()
            result = self._resolve_once(name, hash, profile)
        if result is None:
            return self._not_found(name) if name.strip() else Resolution(
                None, (Diagnostic("E-NAME-NOTFOUND", f"no LoRA has hash {hash}", severity="error", subject=hash),))
        if result.entry is None:
            return result
        entry = self.fresh(result.entry)
        if entry is None:
            return self._not_found(name)
        diags = list(result.diagnostics)
        if hash and result.how != "hash" and not self._has_hash(entry, hash):
            diags.append(Diagnostic("W-HASH-MISMATCH", f"{entry.relpath} does not have hash {hash}; using it by name",
                                    subject=name))
        return Resolution(entry, tuple(diags), result.how, result.candidates)

    def _has_hash(self, entry: Entry, wanted: str) -> bool:
        """Whether `entry` has hash `wanted`; True for a file that cannot be hashed (a broken file,
        not a wrong one: reading it reports why, naming it)."""
        try:
            return hash_matches(self.hashes(entry), wanted)
        except AdapterFileError:
            return True

    def _not_found(self, name: str) -> Resolution:
        """E-NAME-NOTFOUND; for a file of that name still being written (unreadable and modified
        less than `settle_s` ago, so left out of the scan) it says so instead of 'not found'."""
        wanted = name.strip().casefold()
        for path in self.last_report.pending:
            root = next((str(r) for r in self.roots if Path(path).is_relative_to(r)), os.path.dirname(path))
            if wanted in {os.path.splitext(p)[0].casefold() for p in (os.path.basename(path), os.path.relpath(path, root))}:
                return Resolution(None, (Diagnostic(
                    "E-NAME-NOTFOUND", f"LoRA {name!r}: {path} is not readable yet (modified less than {self.settle_s:g} s "
                    "ago, probably still being copied); it is used once it reads, or reported as broken", severity="error",
                    subject=name, data={"pending": path}),))
        return not_found(self._index, name)

    def _resolve_once(self, name: str, hash: str | None, profile: str) -> Resolution | None:
        if name.strip():
            exact = match_exact(self._index, name)
            if exact is not None:
                return exact
        if hash:
            found = self.find_by_hash(hash, compute=True)
            if found:
                diags: tuple[Diagnostic, ...] = ()
                stand_ins = {stand_in_name(found[0].name), stand_in_name(found[0].relpath.rsplit(".", 1)[0])}
                if name.strip() and name.removesuffix("_by_hash") not in stand_ins:
                    diags = (Diagnostic("W-NAME-BY-HASH", f"LoRA {name!r} not found by name; {found[0].relpath} has hash {hash}",
                                        subject=name),)
                return Resolution(found[0], diags, "hash", tuple(found))
        if profile == "a1111" or not name.strip():
            return None
        return match_lenient(self._index, name)

    # ---- sidecars and files ---------------------------------------------------------------
    def write_user_metadata(self, entry: Entry, updates: Mapping[str, Any]) -> Entry:
        """Update A1111's `<stem>.json` of `entry` (unknown keys kept; None removes a key) and
        return the refreshed entry. Refuses entries that are not in this library."""
        current = self._by_path.get(entry.path)
        if current is None or not any(Path(entry.path).is_relative_to(r) for r in self.roots):
            raise LoraPromptError(f"{entry.path}: not a file of this library; metadata not written")
        saved = sidecars.write_user_metadata(Path(current.path), updates)
        updated = replace(current, user=saved)
        with self._lock:
            self._install([updated if e.path == current.path else e for e in self._entries])
        return updated

    def details(self, entry: Entry) -> dict[str, Any]:
        """The details view of `entry` read fresh from its header: metadata `rows`, `tensors`,
        `cover` ((bytes, content type) or None); `{"error": reason}` for a broken file."""
        if entry.path not in self._by_path:
            raise LoraPromptError(f"{entry.path}: not a file of this library")
        if entry.kind != "safetensors":
            return {"rows": [], "tensors": None, "cover": None}
        try:
            return file_details(entry.path)
        except AdapterFileError as exc:
            return {"error": exc.reason}

    def file_ref(self, path: str | os.PathLike[str]) -> str | None:
        """The relative reference a web route takes for a file under a root (see `safe_file`)."""
        p = Path(os.path.abspath(path))
        for root in self.roots:
            if p.is_relative_to(root):
                return p.relative_to(root).as_posix()
        return None

    def safe_file(self, ref: object, kind: str = "preview") -> Path | None:
        """The file a web route may serve for `ref`, or None; the policy is in `paths`."""
        return paths.safe_file(ref, self.roots, kind, self._allowed)

    def safe_image(self, ref: object, kind: str = "preview") -> tuple[Path, str] | None:
        """`safe_file`'s file and the image type its first bytes say (the file is read once)."""
        return paths.safe_image(ref, self.roots, kind, self._allowed)


def _json_sidecars(marks: dict[str, Any]) -> dict[str, Version]:
    """The `<stem>.json` sidecars among the scanned entries' marks (the ones A1111's metadata
    editor, the gallery and other tools rewrite in place), with their `file_version`."""
    out: dict[str, Version] = {}
    for path, mark in marks.items():
        folder = os.path.dirname(path)
        for name, *version in mark[0]:
            lower = name.lower()
            if lower.endswith(".json") and not lower.endswith(".metadata.json"):
                out[folder + os.sep + name] = (version[0], version[1], version[2], version[3])
    return out
