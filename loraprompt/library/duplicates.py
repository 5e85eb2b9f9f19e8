"""Finding duplicate LoRA files: which files could be duplicates, and grouping them by hash.

LoRAs of the same rank and layout have the same size, so in a big library most files share their
size with another. Hashing all of them reads the whole library; instead a first pass hashes a few
small samples of each candidate's tensor data (`sample_hash`), and only files whose data size and
samples match another file's are read in full. Files whose samples differ cannot hold the same
tensors (nor be the same file)."""

from __future__ import annotations

import hashlib
import os
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


SAMPLE_BYTES = 4096
SAMPLES = 4  # spread over the tensor data: its start, its end, and evenly between


def sample_hash(path: str, data_offset: int = 0) -> str:
    """A hash of the tensor data's size and `SAMPLES` chunks of `SAMPLE_BYTES` spread over it
    (the data starts at `data_offset`: after a safetensors header, 0 for other files). Equal for
    files with the same tensor data; files whose values differ differ here too, unless they
    differ only between the samples, which the full hash then decides. OSError if unreadable."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size - data_offset
        digest.update(size.to_bytes(8, "little"))
        last = max(0, size - SAMPLE_BYTES)
        for i in range(SAMPLES):
            f.seek(data_offset + last * i // (SAMPLES - 1))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def needing_full_hash(
    candidates: Sequence[Entry], todo: Sequence[Entry], stems: Mapping[str, Sequence[Entry]],
    sample: Callable[[Entry], str | None], tick: Callable[[int, int], None] | None = None,
) -> list[Entry]:
    """The files of `todo` (candidates without hashes) whose tensor data size and `sample` match
    another candidate's: only they can be duplicates. Samples are taken of the candidates that
    share a data size or a stem with a file of `todo`; a file whose sample cannot be taken
    (None) is hashed in full. `tick(done, total)` after each sample (it may raise to stop)."""
    waiting = {e.path for e in todo}
    by_size: dict[int, list[Entry]] = {}
    for e in candidates:
        by_size.setdefault(_data_size(e), []).append(e)
    near: dict[str, Entry] = {}
    for same in by_size.values():
        if any(e.path in waiting for e in same):
            near.update((e.path, e) for e in same)
    for e in todo:
        near.update((o.path, o) for o in stems.get(e.name, ()) if not o.error and not o.offline)
    keys: dict[str, tuple[int, str | None]] = {}
    for done, (path, e) in enumerate(near.items(), 1):
        keys[path] = (_data_size(e), sample(e))
        if tick is not None:
            tick(done, len(near))
    count: dict[tuple[int, str | None], int] = {}
    for key in keys.values():
        count[key] = count.get(key, 0) + 1
    return [e for e in todo if keys[e.path][1] is None or count[keys[e.path]] > 1]


class _Stopped(Exception):
    """`stop` was set during the sampled first pass."""


def _data_size(e: Entry) -> int:
    return e.size - (e.data_offset or 0)


def find_duplicates(
    candidates: Sequence[Entry],
    stems: Mapping[str, Sequence[Entry]],
    cached: Callable[[Entry], Mapping[str, str | None]],
    compute: Callable[[Entry], Mapping[str, str | None]],
    save: Callable[[], None],
    *,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    sample: Callable[[Entry], str | None] | None = None,
) -> list[DuplicateGroup]:
    """Groups of files with the same bytes, the same tensors under another header, or the same
    name with other content. Only `candidates` are hashed: `cached(entry)` gives the hashes
    already known (empty if none), `compute(entry)` reads the file, `save()` writes the cache
    after hashing. With `sample` (a `sample_hash` of the entry, None when it cannot be taken),
    only candidates whose samples match another's are read in full (`needing_full_hash`).
    `progress(done, total)` is called after each file sampled, then after each file hashed in
    full, and a set `stop` ends either pass early (the groups then cover the files hashed so far)."""
    hashes: dict[str, Mapping[str, str | None]] = {}
    for e in candidates:
        hashes[e.path] = cached(e)
    todo = [e for e in candidates if not hashes[e.path]]
    samples: dict[str, str | None] = {}
    if sample is not None and todo:
        def remember(e: Entry) -> str | None:
            samples[e.path] = sample(e)
            return samples[e.path]

        def tick(done: int, total: int) -> None:
            # the first pass reads a little of every same-size file (most of a big library): it
            # reports, pauses through `progress` and stops like the full hashing
            if stop is not None and stop.is_set():
                raise _Stopped
            if progress is not None:
                progress(done, total)

        try:
            todo = needing_full_hash(candidates, todo, stems, remember, tick)
        except _Stopped:
            todo = []  # the groups cover the files hashed before
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
        if len(named) > 1 and _differ(named, hashes, samples):
            groups.append(DuplicateGroup("same-name", tuple(named)))
    return groups


def _differ(named: Sequence[Entry], hashes: Mapping[str, Mapping[str, str | None]], samples: Mapping[str, str | None]) -> bool:
    """Whether files of one name are known to hold other content: every file's sha256 is known,
    or its sample is and matched no other candidate's (so it was not read in full), and not all
    of them are the same."""
    ids: set[tuple[str, str]] = set()
    for e in named:
        full = hashes.get(e.path, {}).get("sha256")
        if full:
            ids.add(("file", full))
        elif samples.get(e.path):
            ids.add(("sample", str(samples[e.path])))  # unique among the candidates
        else:
            return False  # not hashed (stopped early, or unreadable)
    return len(ids) > 1
