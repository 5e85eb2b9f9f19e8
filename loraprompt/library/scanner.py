"""Walking the LoRA folders and turning each model file into an `Entry`, reading a file only when
the cache has nothing for its version (size, mtime_ns, inode, ctime_ns: `hashes.file_version`)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loraprompt.errors import AdapterFileError, FileReadError
from loraprompt.library import readers
from loraprompt.library.cache import DiskCache, Record
from loraprompt.library.entry import Entry, header_record, sidecar_value
from loraprompt.library.folders import Folder, sorted_names, walk
from loraprompt.library.hashes import file_version
from loraprompt.library.order import entry_key, natural_key  # noqa: F401  (natural_key: the gallery and cards import it from here)
from loraprompt.library.quickheader import Layouts
from loraprompt.library.sidecars import find_names, preview_names, sidecar_names


@dataclass(frozen=True)
class RefreshReport:
    """What one refresh changed, by absolute path."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()  # files being written (new or rewritten): left out until they settle
    offline_roots: tuple[str, ...] = ()  # roots not reachable: their entries were kept
    offline_links: tuple[str, ...] = ()  # symlinks in a root whose target is not reachable (an unplugged drive): kept too
    not_files: tuple[str, ...] = ()  # model names that are no regular file (a FIFO, socket, device): never opened, left out
    unreadable: tuple[str, ...] = ()  # folders that exist but cannot be listed (permissions, I/O errors): entries kept
    files_read: int = 0
    unmounted: tuple[str, ...] = ()  # plain folders a drive was mounted on, now showing their parent's device: entries kept


@dataclass
class ScanResult:
    """Everything one walk of one root found."""

    entries: list[Entry] = field(default_factory=list)
    dir_mtimes: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # files still being written
    read: int = 0  # model headers read (cache misses)
    marks: dict[str, Any] = field(default_factory=dict)  # path -> `file_mark` of files that have one
    sidecars_seen: set[str] = field(default_factory=set)  # sidecar files found (their cache records stay)
    linked_previews: set[str] = field(default_factory=set)  # real paths of previews outside the root
    offline: list[str] = field(default_factory=list)  # dangling symlinks met by the walk (`walk`'s `offline`)
    not_files: list[str] = field(default_factory=list)  # `walk`'s `not_files`
    unreadable: list[str] = field(default_factory=list)  # `walk`'s `unreadable`
    mounts: dict[str, int] = field(default_factory=dict)  # mount points walked or found unmounted -> their drive's st_dev
    unmounted: list[str] = field(default_factory=list)  # `walk`'s unmounted folders (`folders.mount_change`)


def read_sidecars(folder: Folder, listing: dict[str, str], stem: str, cache: DiskCache) -> tuple[dict[str, Any], tuple[Any, ...], int]:
    """(kind -> value of each sidecar of `<stem>` in `folder`, their stats, how many were read);
    a sidecar is read only when its stat changed. `listing` is `folder.companions(filename)`."""
    values: dict[str, Any] = {}
    stamps: list[tuple[str, int, int, int, int]] = []
    read = 0
    if not listing:
        return values, (), 0
    for kind, wanted in sidecar_names(stem).items():
        found = find_names([wanted], listing)
        if not found:
            continue
        path = folder.path + os.sep + found[0]
        try:
            st = os.stat(path)
        except OSError:
            continue
        version = file_version(st)
        stamps.append((found[0], *version))
        record = cache.get(path, *version)
        if record is None:
            read += 1
            try:
                record = cache.put(path, *version, sidecar=sidecar_value(kind, Path(path)))
            except OSError:  # EIO on a share, a permission: may go away, so not cached (read again next scan)
                continue
        if record.get("sidecar") is not None:
            values[kind] = record["sidecar"]
    return values, tuple(stamps), read


_NONE: dict[str, Any] = {}  # the `user` and `imports` of the many entries that have none (never mutated)


def make_entry(
    root: str, folder: Folder, filename: str, *, record: Record, sidecars: dict[str, Any], previews: tuple[str, ...],
    path: str | None = None,
) -> Entry:
    """An Entry from a header record, the sidecar values and the preview names found; `path`, the
    file's path when the caller has it as a string already (kept once in memory). A dot-named file
    (macOS's AppleDouble `._x.safetensors`) is hidden as a dot-folder's files are."""
    stem = filename[: filename.rfind(".")]
    size, mtime_ns, ino, ctime_ns, kind, summary, output_name, family, family_source, data_offset, error, conflict = (
        record.header_values())
    kind = kind or "safetensors"
    if sidecars:
        description = sidecars.get("description") or sidecars.get("description2") or ""
        imports: dict[str, Any] = {k: sidecars[k] for k in ("civitai", "api_info", "lora_manager") if k in sidecars} or _NONE
        user = sidecars.get("user") or _NONE
    else:
        description, imports, user = "", _NONE, _NONE
    return Entry(
        name=stem,
        alias=output_name or stem if kind == "safetensors" else stem,
        path=path or folder.path + os.sep + filename,
        root=root,
        relpath=f"{folder.rel}/{filename}" if folder.rel else filename,
        folder=folder.rel,
        size=size,
        mtime_ns=mtime_ns,
        kind=kind,
        detected_family=family,
        family_source=family_source,
        summary_json=summary or "",
        previews=tuple(folder.path + os.sep + n for n in previews) if previews else (),
        user=user,
        imports=imports,
        description=description,
        error=error,
        hidden=folder.hidden or filename.startswith("."),  # A1111: "/." in the path makes a card search-only
        offline=False,
        data_offset=data_offset,
        notes=(conflict,) if conflict else (),
        ino=ino,
        ctime_ns=ctime_ns,
    )


def settling(mtime_ns: int, settle_s: float) -> bool:
    """Whether a file last written at `mtime_ns` may still be being written: modified less than
    `settle_s` ago, or dated less than that ahead (a share's clock skew); a date further ahead is
    no write in progress."""
    return abs(time.time() - mtime_ns / 1e9) < settle_s


def settled(path: str, settle_s: float) -> bool:
    """Whether a file found still being written has settled since (or is gone): time to read it again."""
    try:
        return not settling(os.stat(path).st_mtime_ns, settle_s)
    except OSError:
        return True


def model_record(
    path: str, st: os.stat_result, cache: DiskCache, settle_s: float, layouts: Layouts | None = None,
    *, read: Mapping[str, dict[str, Any] | str] | None = None,
) -> tuple[Record | None, bool]:
    """(cached or freshly read header record, whether the file was read); (None, True) for a
    broken file modified less than `settle_s` ago (or dated less than that ahead: a share's clock
    skew): probably still being written, skipped.
    `read`: what worker processes read already (`readers.read_headers`)."""
    record = cache.get(path, *file_version(st))
    if record is not None:
        return record, False
    values: dict[str, Any] | str | None = read.get(path) if read else None
    failed = False  # an OSError: says nothing of the file and may go away (EIO on a share), so not cached
    if values is None:
        try:
            values = header_record(path, layouts)
        except FileReadError as exc:
            values, failed = exc.reason, True
        except AdapterFileError as exc:
            values = exc.reason
    if isinstance(values, str):  # the reason the file is broken
        if settling(st.st_mtime_ns, settle_s):
            return None, True
        values = {"kind": "safetensors", "summary": "", "family": None, "error": values}
    if failed:
        return cache.unkept(*file_version(st), **values), True
    return cache.put(path, *file_version(st), **values), True


def read_ahead(folders: list[Folder], cache: DiskCache, workers: int | None) -> tuple[dict[str, os.stat_result], dict[str, Any]]:
    """(path -> stat of every model file, path -> what worker processes read of the headers the
    cache lacks): a cold scan of thousands of files reads them on every CPU (`readers`)."""
    stats: dict[str, os.stat_result] = {}
    missing: list[str] = []
    if readers.worker_count(sum(len(f.models) for f in folders) - len(cache), workers) == 0:
        return stats, {}  # too few files without a record (a warm scan): not worth a pass
    for folder in folders:
        for filename in folder.models:
            path = folder.path + os.sep + filename
            try:
                st = stats[path] = os.stat(path)
            except OSError:
                continue
            if cache.get(path, *file_version(st)) is None and path.lower().endswith(".safetensors"):
                missing.append(path)
    count = readers.worker_count(len(missing), workers)
    return stats, readers.read_headers(missing, count) if count else {}


def _stamps(folder: str, names: tuple[str, ...]) -> tuple[tuple[str, int, int, int, int], ...]:
    """(name, *`file_version`) of each of `names` in `folder` (-1s for one that cannot be read)."""
    stamps = []
    for name in names:
        try:
            st = os.stat(folder + os.sep + name)
            stamps.append((name, *file_version(st)))
        except OSError:
            stamps.append((name, -1, -1, -1, -1))
    return tuple(stamps)


def scan_root(
    root: str, cache: DiskCache, settle_s: float, previous: Mapping[str, Entry], marks: Mapping[str, Any],
    *, ranks: Mapping[str, int] | None = None, workers: int | None = 0, walked: set[tuple[int, int]] | None = None,
    known_mounts: Mapping[str, int] | None = None,
) -> ScanResult:
    """Walk one root and build its entries in A1111's walk order (`walk_key`), reusing the
    `previous` entry of a file whose stat and `marks` (sidecars, previews) are unchanged. With
    `ranks` (path -> position in the last scan's order, `DiskCache.ranks`) that has every path,
    the entries are sorted by it: the natural order of a subset of those paths is theirs.
    `workers`: processes reading new headers (`readers.worker_count`; None: by CPUs and count);
    `walked`: the folders other roots' walks listed already (`walk`'s `seen`), left out here;
    `known_mounts`: the mount points of the last scan (`DiskCache.mounts`), to tell an unmounted drive."""
    result = ScanResult()
    layouts = Layouts()
    real_root = os.path.join(os.path.realpath(root), "")
    mounts = None if known_mounts is None else (known_mounts, result.mounts, result.unmounted)
    folders = walk(root, result.dir_mtimes, walked, result.offline, result.not_files, unreadable=result.unreadable, mounts=mounts)
    # a warm scan pays one cache lookup per file here; a cold one has its headers read on every CPU
    stats, read = read_ahead(folders, cache, workers) if workers != 0 else ({}, {})
    for folder in folders:
        real = os.path.join(os.path.realpath(folder.path), "")
        folder.outside = real[:-1] if not real.startswith(real_root) else None
        for filename in folder.models:
            entry = scan_file(root, folder, filename, cache=cache, settle_s=settle_s, previous=previous, marks=marks, result=result,
                              layouts=layouts, stats=stats, read=read)
            if entry is not None:
                result.entries.append(entry)
    # `walk` pops folders depth first: sort into A1111's order
    try:
        if ranks is None:
            raise KeyError("no ranks")
        result.entries.sort(key=lambda e: ranks[e.path])  # keys are made first: a KeyError leaves the list as it was
    except KeyError:
        result.entries.sort(key=entry_key)
    return result


def scan_file(
    root: str, folder: Folder, filename: str, *, cache: DiskCache, settle_s: float,
    previous: Mapping[str, Entry], marks: Mapping[str, Any], result: ScanResult, layouts: Layouts | None = None,
    stats: Mapping[str, os.stat_result] | None = None, read: Mapping[str, Any] | None = None,
) -> Entry | None:
    """The entry of one model file (None while it is still being written), noted in `result`;
    `stats` and `read` come from `read_ahead`."""
    path = folder.path + os.sep + filename
    st = stats.get(path) if stats else None
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return None
    record, was_read = model_record(path, st, cache, settle_s, layouts, read=read)
    result.read += was_read
    if record is None:
        result.pending.append(path)
        return None
    stem = filename[: filename.rfind(".")]
    listing = folder.companions(filename)
    sidecars, stamps, sidecars_read = read_sidecars(folder, listing, stem, cache)
    if stamps:
        result.sidecars_seen.update(folder.path + os.sep + name for name, *_ in stamps)
    previews = tuple(find_names(preview_names(stem), listing)) if listing else ()
    if folder.outside is not None:
        result.linked_previews.update(folder.outside + os.sep + name for name in previews)
    # a preview replaced under the same name makes a new entry, so whatever is keyed by entries
    # (the gallery's cards and thumbnail URLs) sees it, whether or not the model file was re-read
    mark = (stamps, _stamps(folder.path, previews), folder.hidden) if stamps or previews or folder.hidden else None
    entry = previous.get(path)
    if (entry is None or entry.offline or was_read or sidecars_read or entry.size != st.st_size or entry.mtime_ns != st.st_mtime_ns
            or entry.ino != st.st_ino or entry.ctime_ns != st.st_ctime_ns or marks.get(path) != mark):
        entry = make_entry(root, folder, filename, record=record, sidecars=sidecars, previews=previews, path=path)
    if mark is not None:  # most files have no sidecar or preview: nothing kept for them
        result.marks[path] = mark
    return entry


def cached_entries(root: str, cache: DiskCache, place: str | None = None) -> list[Entry]:
    """Entries of an unreachable root, or of the unreachable `place` in it (a dangling symlink),
    from what the cache knows (header records and sidecars; previews are unknown), marked
    offline, in walk order."""
    prefix = os.path.join(place or root, "")
    out: list[Entry] = []
    for path in cache.paths():
        record = cache.peek(path)
        if not (path.startswith(prefix) or path == place) or record is None or "kind" not in record:
            continue
        rel = os.path.relpath(os.path.dirname(path), root).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        folder = Folder(os.path.dirname(path), rel, [], [], any(p.startswith(".") for p in rel.split("/") if p))
        stem = os.path.splitext(os.path.basename(path))[0]
        sidecars = {}
        for kind, name in sidecar_names(stem).items():
            side = cache.peek(os.path.join(folder.path, name))
            if side is not None and side.get("sidecar") is not None:
                sidecars[kind] = side["sidecar"]
        entry = make_entry(root, folder, os.path.basename(path), record=record, sidecars=sidecars, previews=())
        out.append(replace(entry, offline=True))
    out.sort(key=entry_key)
    return out


def offline_entries(root: str, places: list[str], old: Mapping[str, Entry], cache: DiskCache) -> list[Entry]:
    """The entries at or under each of `places` (symlinks in `root` whose target is not reachable,
    folders that cannot be listed, unmounted drives' folders), marked offline: from the last scan,
    else from the cache (LM #1108: an unplugged drive must not wipe its part of the library)."""
    out: list[Entry] = []
    for place in places:
        under = os.path.join(place, "")
        kept = [replace(e, offline=True) for e in old.values() if e.root == root and (e.path == place or e.path.startswith(under))]
        out += kept or cached_entries(root, cache, place)
    return out


def folder_of(path: str, root: str) -> Folder:
    """The Folder for one file's directory (used to refresh a single entry)."""
    parent = os.path.dirname(path)
    rel = os.path.relpath(parent, root).replace(os.sep, "/") if parent != root else ""
    try:
        names = sorted_names(os.listdir(parent))
    except OSError:
        names = []
    hidden = any(part.startswith(".") for part in rel.split("/") if part)
    return Folder(parent, rel, names, [os.path.basename(path)], hidden)
