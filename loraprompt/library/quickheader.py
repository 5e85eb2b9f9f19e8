"""The scan's header read: what a card needs from a safetensors header, at the speed of
`json.loads`.

`safetensors_header.read_header` validates every tensor entry in Python (about 10 µs per tensor);
over 10,000 files of ~800 tensors that is minutes. The scan instead checks what decides whether a
file is usable and what the gallery shows: `read_header`'s own size, UTF-8, JSON-object and
metadata checks (so both give the same verdict on metadata, robustness item 7), every tensor
entry an object with two integer `data_offsets`, and the data ending exactly at the end of the
file (a half-written or padded file is caught). Overlaps, gaps, duplicate names, dtypes and
shapes are left to `read_header`, which every loader runs before touching tensor data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from operator import gt, itemgetter
from typing import Any

from loraprompt.errors import AdapterFileError
from loraprompt.library.safetensors_header import check_metadata, parse_header, read_prefix

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


def read_quick_header(path: str | os.PathLike[str]) -> QuickHeader:
    """The scan's view of a safetensors header (see the module docstring); AdapterFileError
    naming the file (and key) when it is not usable."""
    spath = os.fspath(path)
    raw, size = read_prefix(spath)
    doc = parse_header(spath, raw)
    metadata = check_metadata(spath, doc.pop("__metadata__", None))
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
