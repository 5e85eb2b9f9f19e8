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

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from operator import gt, itemgetter
from typing import Any

from loraprompt.errors import AdapterFileError
from loraprompt.library.safetensors_header import check_metadata, parse_header, read_prefix

_LEAD = b'{"__metadata__":{'
_EMPTY_METADATA = '{"__metadata__":{}'
_DECODER = json.JSONDecoder()

# In the header text a tensor entry's keys appear unescaped; inside names and metadata strings
# every quote is escaped, so this pattern matches only entry keys. As many matches as entries
# means every entry has two integer offsets.
_OFFSETS = re.compile(rb'"data_offsets"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]')
_OFFSETS_TEXT = re.compile(_OFFSETS.pattern.decode())


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
    layout: str | None = None  # the tensor section's text when `Layouts` knows it (a key for what derives from it)


class Layouts:
    """What one scan learned from each distinct tensor section: (shapes, where the data ends);
    callers may keep what they derive from a section in `derived`, keyed by (layout, ...). At
    most `budget` characters of sections are kept: beyond that everything is forgotten and
    learned again (a library of all-different layouts pays one dict lookup per file)."""

    def __init__(self, budget: int = 4 * 2**20) -> None:
        self.budget = budget
        self.sections: dict[str, tuple[_Shapes, int]] = {}
        self.derived: dict[Any, Any] = {}
        self._chars = 0

    def learn(self, layout: str, shapes: _Shapes, end: int) -> bool:
        """Keep what `layout` gave; False when it is over the budget by itself (not kept)."""
        if len(layout) > self.budget:
            return False
        if self._chars + len(layout) > self.budget:
            self.sections.clear()
            self.derived.clear()
            self._chars = 0
        self.sections[layout] = (shapes, end)
        self._chars += len(layout)
        return True


def read_quick_header(path: str | os.PathLike[str], layouts: Layouts | None = None) -> QuickHeader:
    """The scan's view of a safetensors header (see the module docstring); AdapterFileError
    naming the file (and key) when it is not usable."""
    spath = os.fspath(path)
    raw, size = read_prefix(spath)
    if layouts is not None and raw.startswith(_LEAD):
        found = _by_layout(spath, raw, size, layouts)
        if found is not None:
            return found
    doc = parse_header(spath, raw)
    metadata = check_metadata(spath, doc.pop("__metadata__", None))
    end = _data_end(spath, _OFFSETS.findall(raw), doc)
    return _checked(spath, QuickHeader(metadata, _Shapes(doc), 8 + len(raw), size), end)


def _by_layout(spath: str, raw: bytes, size: int, layouts: Layouts) -> QuickHeader | None:
    """The header through `layouts` (see the module docstring), or None for the full read."""
    try:
        text = raw.decode("utf-8")
        meta, stop = _DECODER.raw_decode(text, len(_LEAD) - 1)
        metadata = check_metadata(spath, meta)
        layout = text[stop:].rstrip(" \t\n\r")  # JSON's whitespace: safetensors pads the header with spaces
        known = layouts.sections.get(layout)
        kept = known is not None
        if known is None:
            if '"__metadata__"' in layout:
                return None
            doc = json.loads(_EMPTY_METADATA + layout)  # the header with {} for its metadata: valid exactly when it is
            del doc["__metadata__"]
            known = (_Shapes(doc), _data_end(spath, _OFFSETS_TEXT.findall(layout), doc))
            kept = layouts.learn(layout, *known)
    except (ValueError, RecursionError, AdapterFileError):  # the full read says what is wrong
        return None
    return _checked(spath, QuickHeader(metadata, known[0], 8 + len(raw), size, layout if kept else None), known[1])


def _data_end(spath: str, pairs: list[Any], doc: dict[str, Any]) -> int:
    """Where the tensor data ends: from the offsets `pairs` found in the text when there is one
    pair per entry and none is reversed, else entry by entry."""
    if len(pairs) == len(doc):
        # map/itemgetter/operator iterate in C: no Python loop over hundreds of tensors
        starts = list(map(int, map(itemgetter(0), pairs)))
        stops = list(map(int, map(itemgetter(1), pairs)))
        if not any(map(gt, starts, stops)):
            return max(stops, default=0)
    return _checked_end(spath, doc)


def _checked(spath: str, header: QuickHeader, end: int) -> QuickHeader:
    """`header` when its tensor data ends exactly at the end of the file."""
    held = header.file_size - header.data_offset
    if end != held:
        raise AdapterFileError(spath, f"tensor data ends at {end}, the data section holds {held} bytes (truncated or padded file)")
    return header


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
