"""Walking the LoRA folders and turning each model file into an `Entry`, reading a file only when
the cache has nothing for its (size, mtime_ns)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprompt.errors import AdapterFileError
from loraprompt.library.cache import DiskCache
from loraprompt.library.entry import MODEL_EXTS, Entry, header_record, sidecar_value
from loraprompt.library.metadata import MetadataSummary
from loraprompt.library.sidecars import find_names, make_listing, preview_names, sidecar_names

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> list[Any]:
    """Sort key that orders `lora2` before `lora10`, case-insensitively."""
    return [int(t) if t.isdigit() else t.casefold() for t in _DIGITS.split(text)]


@dataclass
class Folder:
    """One walked folder: its path relative to the root, its listing and whether it is hidden."""

    path: Path
    rel: str
    listing: dict[str, str]  # lower-cased name -> name
    models: list[str]
    hidden: bool


@dataclass
class ScanResult:
    """Everything one walk of one root found."""

    entries: list[Entry] = field(default_factory=list)
    dir_mtimes: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # files still being written
    read: int = 0  # model headers read (cache misses)
    fingerprints: dict[str, tuple[Any, Entry]] = field(default_factory=dict)


def walk(root: Path, dir_mtimes: dict[str, int]) -> list[Folder]:
    """Every folder under `root` (symlinks followed, each real folder once), naturally sorted."""
    out: list[Folder] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str, bool]] = [(root, "", False)]
    while stack:
        path, rel, hidden = stack.pop()
        try:
            st = path.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            dir_mtimes[str(path)] = st.st_mtime_ns
            with os.scandir(path) as it:
                items = list(it)
        except OSError:
            continue
        models: list[str] = []
        subdirs: list[str] = []
        for item in items:
            try:
                is_dir = item.is_dir()
            except OSError:
                continue
            if is_dir:
                subdirs.append(item.name)
            elif os.path.splitext(item.name)[1].lower() in MODEL_EXTS:
                models.append(item.name)
        listing = make_listing(item.name for item in items)
        out.append(Folder(path, rel, listing, sorted(models, key=natural_key), hidden))
        for name in sorted(subdirs, key=natural_key, reverse=True):
            stack.append((path / name, f"{rel}/{name}" if rel else name, hidden or name.startswith(".")))
    return out


def read_sidecars(folder: Folder, stem: str, cache: DiskCache) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """(kind -> value of each sidecar of `<stem>` in `folder`, their stats); a sidecar is read
    only when its stat changed."""
    values: dict[str, Any] = {}
    stamps: list[tuple[str, int, int]] = []
    for kind, wanted in sidecar_names(stem).items():
        found = find_names([wanted], folder.listing)
        if not found:
            continue
        path = folder.path / found[0]
        try:
            st = path.stat()
        except OSError:
            continue
        stamps.append((found[0], st.st_size, st.st_mtime_ns))
        record = cache.get(str(path), st.st_size, st.st_mtime_ns)
        if record is None:
            record = cache.put(str(path), st.st_size, st.st_mtime_ns, sidecar=sidecar_value(kind, path))
        if record.get("sidecar") is not None:
            values[kind] = record["sidecar"]
    return values, tuple(stamps)


def make_entry(
    root: Path, folder: Folder, filename: str, *, st: os.stat_result, record: dict[str, Any], sidecars: dict[str, Any]
) -> Entry:
    """An Entry from a header record, the folder listing and the sidecar values."""
    stem = os.path.splitext(filename)[0]
    summary = MetadataSummary.from_json(record.get("summary", {}))
    description = sidecars.get("description") or sidecars.get("description2") or ""
    imports: dict[str, Any] = {k: sidecars[k] for k in ("civitai", "lora_manager") if k in sidecars}
    previews = tuple(str(folder.path / n) for n in find_names(preview_names(stem), folder.listing))
    notes = (record["family_conflict"],) if record.get("family_conflict") else ()
    return Entry(
        name=stem,
        alias=summary.output_name if record.get("kind") == "safetensors" and summary.output_name else stem,
        path=str(folder.path / filename),
        root=str(root),
        relpath=f"{folder.rel}/{filename}" if folder.rel else filename,
        folder=folder.rel,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        kind=str(record.get("kind", "safetensors")),
        detected_family=record.get("family"),
        family_source=record.get("family_source"),
        summary=summary,
        previews=previews,
        user=sidecars.get("user") or {},
        imports=imports,
        description=description,
        error=record.get("error"),
        hidden=folder.hidden,
        data_offset=record.get("data_offset"),
        notes=notes,
    )


def model_record(path: Path, st: os.stat_result, cache: DiskCache, settle_s: float) -> tuple[dict[str, Any] | None, bool]:
    """(cached or freshly read header record, whether the file was read); (None, True) for a
    broken file modified less than `settle_s` ago: probably still being written, skipped."""
    record = cache.get(str(path), st.st_size, st.st_mtime_ns)
    if record is not None:
        return record, False
    try:
        values = header_record(path)
    except AdapterFileError as exc:
        if time.time() - st.st_mtime_ns / 1e9 < settle_s:
            return None, True
        values = {"kind": "safetensors", "summary": {}, "family": None, "error": exc.reason}
    return cache.put(str(path), st.st_size, st.st_mtime_ns, **values), True


def scan_root(root: Path, cache: DiskCache, settle_s: float, previous: Mapping[str, tuple[Any, Entry]]) -> ScanResult:
    """Walk one root and build its entries in A1111's (natural-sorted) order, reusing the
    `previous` (fingerprint, entry) of a file whose stat, sidecars and previews are unchanged."""
    result = ScanResult()
    for folder in walk(root, result.dir_mtimes):
        for filename in folder.models:
            path = folder.path / filename
            try:
                st = path.stat()
            except OSError:
                continue
            record, was_read = model_record(path, st, cache, settle_s)
            result.read += was_read
            if record is None:
                result.pending.append(str(path))
                continue
            stem = os.path.splitext(filename)[0]
            sidecars, stamps = read_sidecars(folder, stem, cache)
            fingerprint = (st.st_size, st.st_mtime_ns, stamps, tuple(find_names(preview_names(stem), folder.listing)), folder.hidden)
            old = previous.get(str(path))
            entry = old[1] if old is not None and old[0] == fingerprint else None
            if entry is None:
                entry = make_entry(root, folder, filename, st=st, record=record, sidecars=sidecars)
            result.entries.append(entry)
            result.fingerprints[entry.path] = (fingerprint, entry)
    result.entries.sort(key=lambda e: natural_key(e.relpath))
    return result


def folder_of(path: Path, root: Path) -> Folder:
    """The Folder for one file's directory (used to refresh a single entry)."""
    parent = path.parent
    rel = parent.relative_to(root).as_posix() if parent != root else ""
    try:
        listing = make_listing(os.listdir(parent))
    except OSError:
        listing = {}
    hidden = any(part.startswith(".") for part in rel.split("/") if part)
    return Folder(parent, rel, listing, [path.name], hidden)
