"""A strict safetensors header reader using only the standard library (no torch, no safetensors).

`read_header(path)` validates the whole layout (robustness.md items 1-7) before anything is
allocated for tensor data: header size, UTF-8 JSON object, dtypes, shapes, offsets that tile the
data section exactly, duplicate names, metadata that are strings. Every failure is an
`AdapterFileError` naming the file (and the tensor when there is one).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loraprompt.errors import AdapterFileError, FileReadError
from loraprompt.library.hashes import Version, file_version

MAX_HEADER = 100 * 1024 * 1024
MAX_METADATA_VALUE = 16 * 1024 * 1024
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 48

# dtype name -> bytes per element (names as the safetensors format spells them)
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: dtype name, shape and byte range relative to the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header: metadata, tensor entries, where the data starts, the file size."""

    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_offset: int
    file_size: int


def _no_duplicates(path: str):  # type: ignore[no-untyped-def]
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise AdapterFileError(path, "the header names this entry twice", key=key)
            out[key] = value
        return out

    return hook


_FIRST_READ = 64 * 1024  # one read takes the length and, for most LoRAs, the whole header


def read_prefix(path: str, max_header: int = MAX_HEADER) -> tuple[bytes, int]:
    """The header bytes and the file size, after the size checks every reader shares (raw file
    descriptor calls, one read for most files: a library scan reads 100,000 of these)."""
    try:
        # O_NONBLOCK: opening a FIFO would wait for a writer forever (it changes nothing for a file)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if os.path.isdir(path):
            raise AdapterFileError(path, "is a directory, not a safetensors file") from exc
        raise FileReadError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise AdapterFileError(path, "is a directory, not a safetensors file")
        if not stat.S_ISREG(st.st_mode):
            raise AdapterFileError(path, "is not a regular file (a FIFO, socket or device), not a safetensors file")
        size = st.st_size
        if size < 8:
            raise AdapterFileError(path, f"file is {size} bytes, too short for a safetensors header")
        first = os.read(fd, _FIRST_READ)
        if len(first) < 8:
            raise AdapterFileError(path, "file was truncated while reading the header")
        (n,) = struct.unpack_from("<Q", first)
        if n > max_header:
            raise AdapterFileError(path, f"header length {n} exceeds the {max_header}-byte limit")
        if n < 2 or 8 + n > size:
            raise AdapterFileError(path, f"header length {n} does not fit in a {size}-byte file")
        raw = first[8 : 8 + n]
        while len(raw) < n:
            more = os.read(fd, n - len(raw))
            if not more:
                break
            raw += more
    except OSError as exc:
        raise FileReadError(path, f"cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(raw) != n:
        raise AdapterFileError(path, "file was truncated while reading the header")
    return raw, size


def parse_header(
    path: str, raw: bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The header bytes as a JSON object; AdapterFileError when they are not UTF-8 JSON of an object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AdapterFileError(path, f"header is not UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise AdapterFileError(path, f"header is not valid JSON: {exc.msg} at char {exc.pos}") from exc
    except RecursionError as exc:
        raise AdapterFileError(path, "header JSON is nested too deeply to read") from exc
    if not isinstance(doc, dict):
        raise AdapterFileError(path, "header is not a JSON object")
    return doc


def _tensor_info(path: str, name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict):
        raise AdapterFileError(path, "tensor entry is not an object", key=name)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise AdapterFileError(path, f"unknown dtype {dtype!r}", key=name)
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise AdapterFileError(path, f"bad shape {shape!r}", key=name)
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise AdapterFileError(path, f"bad shape {shape!r}", key=name)
        count *= dim
        if count > MAX_ELEMENTS:
            raise AdapterFileError(path, f"shape {shape!r} overflows", key=name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise AdapterFileError(path, f"bad data_offsets {offsets!r}", key=name)
    start, end = offsets
    if start < 0 or end < start:
        raise AdapterFileError(path, f"bad data_offsets {offsets!r}", key=name)
    if end - start != count * DTYPE_SIZES[dtype]:
        raise AdapterFileError(
            path, f"data_offsets {offsets!r} hold {end - start} bytes, {dtype}{shape} needs {count * DTYPE_SIZES[dtype]}", key=name
        )
    return TensorInfo(dtype, tuple(shape), start, end)


def check_metadata(path: str, raw: Any) -> dict[str, str]:
    """`__metadata__` as a dict of strings ({} when absent); AdapterFileError naming the bad key."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AdapterFileError(path, "__metadata__ is not an object", key="__metadata__")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise AdapterFileError(path, f"metadata value is a {type(value).__name__}, not a string", key=key)
        if len(value) > MAX_METADATA_VALUE:
            raise AdapterFileError(path, f"metadata value of {len(value)} characters is too large", key=key)
    return dict(raw)


def _check_layout(path: str, tensors: dict[str, TensorInfo], data_size: int) -> None:
    pos = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start < pos:
            raise AdapterFileError(path, f"tensor data overlaps the previous tensor at byte {info.start}", key=name)
        if info.start > pos:
            raise AdapterFileError(path, f"gap of {info.start - pos} bytes before this tensor's data", key=name)
        if info.end > data_size:
            raise AdapterFileError(path, f"tensor data ends at {info.end}, beyond the {data_size}-byte data section", key=name)
        pos = info.end
    if pos != data_size:
        raise AdapterFileError(path, f"{data_size - pos} bytes left after the last tensor (truncated or padded file)")


def read_header(path: str | os.PathLike[str], max_header: int = MAX_HEADER) -> SafetensorsHeader:
    """Read and fully validate a safetensors header; AdapterFileError on anything malformed."""
    spath = os.fspath(path)
    raw, size = read_prefix(spath, max_header)
    doc = parse_header(spath, raw, _no_duplicates(spath))
    metadata = check_metadata(spath, doc.pop("__metadata__", None))
    tensors = {name: _tensor_info(spath, name, entry) for name, entry in doc.items()}
    data_offset = 8 + len(raw)
    _check_layout(spath, tensors, size - data_offset)
    return SafetensorsHeader(metadata, tensors, data_offset, size)


# path -> (file version, metadata): A1111's card pages and /sdapi/v1/loras ask for every file on
# every call, and A1111 keeps this metadata from its scan instead of reading each header again
_DECODED: dict[str, tuple[Version, dict[str, Any]]] = {}


def decoded_metadata(path: str) -> dict[str, Any]:
    """A `.safetensors` file's metadata with `{`-values JSON-decoded, as A1111 returns it in
    /sdapi/v1/loras; {} when unreadable. Read once per `file_version` of the file (one replaced with
    its size and mtime kept is read again); each caller gets its own dict."""
    if not path.lower().endswith(".safetensors"):
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    version = file_version(st)
    cached = _DECODED.get(path)
    if cached is None or cached[0] != version:
        cached = (version, _decode_metadata(path))
        _DECODED[path] = cached
    return dict(cached[1])


def _decode_metadata(path: str) -> dict[str, Any]:
    try:
        metadata: dict[str, Any] = dict(read_header(path).metadata)
    except (AdapterFileError, OSError):
        return {}
    for key, value in metadata.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                metadata[key] = json.loads(value)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
                pass
    return metadata
