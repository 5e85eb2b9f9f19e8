"""Finding duplicate LoRA files: which files could be duplicates, and grouping them by hash."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from loraprompt.errors import AdapterFileError
from loraprompt.library.entry import Entry


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are the same: `kind` is "same-file", "same-tensors" or "same-name"."""

    kind: str
    entries: tuple[Entry, ...] = field(default_factory=tuple)


def duplicate_candidates(entries: Iterable[Entry], stems: Mapping[str, Sequence[Entry]]) -> list[Entry]:
    """Entries that can be in a duplicate group: those sharing their tensor data size or their
    stem with another file. Only these are hashed to find the groups."""
    by_size: dict[int, list[Entry]] = {}
    for e in entries:
        if not e.error and not e.offline:
            by_size.setdefault(e.size - (e.data_offset or 0), []).append(e)
    out = {e.path: e for same in by_size.values() if len(same) > 1 for e in same}
    for named in stems.values():
        if len(named) > 1:
            out.update((e.path, e) for e in named if not e.error and not e.offline)
    return list(out.values())


def find_duplicates(
    candidates: Sequence[Entry],
    stems: Mapping[str, Sequence[Entry]],
    cached: Callable[[Entry], Mapping[str, str | None]],
    compute: Callable[[Entry], Mapping[str, str | None]],
    save: Callable[[], None],
    *,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> list[DuplicateGroup]:
    """Groups of files with the same bytes, the same tensors under another header, or the same
    name with other content. Only `candidates` are hashed: `cached(entry)` gives the hashes
    already known (empty if none), `compute(entry)` reads the file, `save()` writes the cache
    after hashing. `progress(done, total)` is called after each file hashed, and a set `stop`
    ends the hashing early (the groups then cover the files hashed so far)."""
    hashes: dict[str, Mapping[str, str | None]] = {}
    for e in candidates:
        hashes[e.path] = cached(e)
    todo = [e for e in candidates if not hashes[e.path]]
    for done, entry in enumerate(todo, 1):
        if stop is not None and stop.is_set():
            break
        try:
            hashes[entry.path] = compute(entry)
        except AdapterFileError:
            pass  # vanished or unreadable since the scan: left out
        if progress is not None:
            progress(done, len(todo))
    save()
    groups: list[DuplicateGroup] = []
    by_tensors: dict[tuple[int, str], list[Entry]] = {}
    for e in candidates:
        content = hashes[e.path].get("a1111")
        if content:
            by_tensors.setdefault((e.size - (e.data_offset or 0), content), []).append(e)
    for members in by_tensors.values():
        if len(members) < 2:
            continue
        files: dict[str, list[Entry]] = {}
        for e in members:
            files.setdefault(hashes[e.path].get("sha256") or "", []).append(e)
        groups += [DuplicateGroup("same-file", tuple(f)) for f in files.values() if len(f) > 1]
        if len(files) > 1:
            groups.append(DuplicateGroup("same-tensors", tuple(members)))
    for named in stems.values():
        sums = [hashes.get(e.path, {}).get("sha256") for e in named]
        if len(named) > 1 and all(sums) and len(set(sums)) > 1:
            groups.append(DuplicateGroup("same-name", tuple(named)))
    return groups
