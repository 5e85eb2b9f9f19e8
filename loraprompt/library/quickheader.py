"""The scan's header read: what a card needs from a safetensors header, at the speed of
`json.loads`.

`safetensors_header.read_header` validates every tensor entry in Python (about 10 µs per tensor);
over 10,000 files of ~800 tensors that is minutes. The scan instead checks what decides whether a
file is usable and what the gallery shows: the same size, UTF-8, JSON-object and metadata rules
as `read_header` (so both give the same verdict on metadata, robustness item 7), every tensor
entry an object with two integer `data_offsets`, and the data ending exactly at the end of the
file (a half-written or padded file is caught). Overlaps, gaps, duplicate names, dtypes and
shapes are left to `read_header`, which every loader runs before touching tensor data.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from operator import gt, itemgetter
from typing import Any

from loraprompt.errors import AdapterFileError
from loraprompt.library.safetensors_header import MAX_HEADER, MAX_METADATA_VALUE

# In the header text a tensor entry's keys appear unescaped; inside names and metadata strings
# every quote is escaped, so this pattern matches only entry keys. As many matches as entries
# means every entry has two integer offsets.
_OFFSETS = re.compile(rb'"data_offsets"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]')


class _Shapes(Mapping[str, tuple[int, ...]]):
    """Tensor name -> shape, read from the parsed header only for the names asked for."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._doc = doc

    def __getitem__(self, name: str) -> tuple[int, ...]:
        entry = self._doc[name]
        shape = entry.get("shape") if isinstance(entry, dict) else None
        return tuple(shape) if isinstance(shape, list) else ()

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc)

    def __len__(self) -> int:
        return len(self._doc)


@dataclass(frozen=True)
class QuickHeader:
    """Metadata, tensor shapes by name, where the data starts and the file size."""

    metadata: dict[str, str]
    shapes: Mapping[str, tuple[int, ...]]
    data_offset: int
    file_size: int


def _prefix(path: str) -> tuple[bytes, int]:
    if os.path.isdir(path):
        raise AdapterFileError(path, "is a directory, not a safetensors file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise AdapterFileError(path, f"file is {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER:
                raise AdapterFileError(path, f"header length {n} exceeds the {MAX_HEADER}-byte limit")
            if n < 2 or 8 + n > size:
                raise AdapterFileError(path, f"header length {n} does not fit in a {size}-byte file")
            raw = f.read(n)
    except OSError as exc:
        raise AdapterFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) != n:
        raise AdapterFileError(path, "file was truncated while reading the header")
    return raw, size


def read_quick_header(path: str | os.PathLike[str]) -> QuickHeader:
    """The scan's view of a safetensors header (see the module docstring); AdapterFileError
    naming the file (and key) when it is not usable."""
    spath = os.fspath(path)
    raw, size = _prefix(spath)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AdapterFileError(spath, f"header is not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise AdapterFileError(spath, f"header is not valid JSON: {exc.msg} at char {exc.pos}") from exc
    if not isinstance(doc, dict):
        raise AdapterFileError(spath, "header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise AdapterFileError(spath, "__metadata__ is not an object", key="__metadata__")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise AdapterFileError(spath, f"metadata value is a {type(value).__name__}, not a string", key=key)
        if len(value) > MAX_METADATA_VALUE:
            raise AdapterFileError(spath, f"metadata value of {len(value)} characters is too large", key=key)
    data_offset = 8 + len(raw)
    pairs = _OFFSETS.findall(raw)
    end = -1
    if len(pairs) == len(doc):
        # map/itemgetter/operator iterate in C: no Python loop over hundreds of tensors
        starts = list(map(int, map(itemgetter(0), pairs)))
        stops = list(map(int, map(itemgetter(1), pairs)))
        if not any(map(gt, starts, stops)):
            end = max(stops, default=0)
    if end < 0:
        end = _checked_end(spath, doc)
    if end != size - data_offset:
        raise AdapterFileError(spath, f"tensor data ends at {end}, the data section holds {size - data_offset} bytes (truncated or padded file)")
    return QuickHeader(metadata, _Shapes(doc), data_offset, size)


def _checked_end(spath: str, doc: dict[str, Any]) -> int:
    """Where the tensor data ends, entry by entry, naming the first entry that is malformed."""
    end = 0
    for name, entry in doc.items():
        try:
            start, stop = entry["data_offsets"]
            tuple(entry["shape"])
        except (TypeError, KeyError, ValueError) as exc:
            raise AdapterFileError(spath, "tensor entry lacks a shape or two data_offsets", key=name) from exc
        if type(start) is not int or type(stop) is not int or stop < start or start < 0:
            raise AdapterFileError(spath, f"bad data_offsets {entry['data_offsets']!r}", key=name)
        end = max(end, stop)
    return end
