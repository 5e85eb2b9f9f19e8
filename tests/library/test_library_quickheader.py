"""The scan's header read refuses what cannot be used and agrees with `read_header` on metadata."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from loraprompt.errors import AdapterFileError
from loraprompt.library.quickheader import Layouts, read_quick_header
from loraprompt.library.safetensors_header import MAX_METADATA_VALUE, read_header

from .conftest import write_lora


def raw_file(path: Path, header: object, data: bytes = b"", raw: bytes | None = None) -> Path:
    body = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def test_reads_metadata_and_shapes(tmp_path: Path) -> None:
    p = write_lora(tmp_path / "a.safetensors", {"ss_output_name": "a"}, keys={"w": (2, 3)})
    q = read_quick_header(p)
    full = read_header(p)
    assert q.metadata == full.metadata and q.shapes == {"w": (2, 3)}
    assert (q.data_offset, q.file_size) == (full.data_offset, full.file_size)


@pytest.mark.parametrize(
    ("header", "data", "raw", "reason"),
    [
        (None, b"", b"", "too short"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0\0", None, "truncated or padded"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, None, "truncated or padded"),
        ({"__metadata__": {"n": 1}}, b"", None, "not a string"),
        ({"__metadata__": [1]}, b"", None, "not an object"),
        ([1, 2], b"", None, "not a JSON object"),
        (None, b"", b"{\"a\": ", "not valid JSON"),
        (None, b"", b"\xff\xfe{}", "not UTF-8"),
        ({"w": {"dtype": "F32", "shape": [1]}}, b"", None, "lacks a shape"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"", None, "bad data_offsets"),
    ],
)
def test_refused_with_the_file_named(tmp_path: Path, header: object, data: bytes, raw: bytes | None, reason: str) -> None:
    p = tmp_path / "bad.safetensors"
    if header is None and raw == b"":
        p.write_bytes(b"1234567")
    else:
        raw_file(p, header, data, raw)
    with pytest.raises(AdapterFileError, match=reason) as info:
        read_quick_header(p)
    assert info.value.path == str(p)


def test_header_length_beyond_file_refused(tmp_path: Path) -> None:
    p = tmp_path / "long.safetensors"
    p.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(AdapterFileError, match="does not fit"):
        read_quick_header(p)


@pytest.mark.parametrize("metadata", [{"a": 5}, {"a": ["x"]}, {"a": None}])
def test_same_metadata_verdict_as_read_header(tmp_path: Path, metadata: dict[str, object]) -> None:
    p = raw_file(tmp_path / "m.safetensors", {"__metadata__": metadata})
    with pytest.raises(AdapterFileError) as quick:
        read_quick_header(p)
    with pytest.raises(AdapterFileError) as full:
        read_header(p)
    assert (quick.value.reason, quick.value.key) == (full.value.reason, full.value.key)


@pytest.mark.parametrize("value", [5, "x" * (MAX_METADATA_VALUE + 1)], ids=["number", "huge"])
def test_the_scans_layout_path_gives_read_headers_verdict(tmp_path: Path, value: object) -> None:
    """A file whose tensor section the scan already knows is read through `Layouts`; a bad or huge
    metadata value there is refused as read_header refuses it (robustness item 7)."""
    def compact(metadata: dict[str, object]) -> bytes:  # as safetensors writes it: metadata first, no spaces
        header = {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
        return json.dumps(header, separators=(",", ":")).encode()

    layouts = Layouts()
    read_quick_header(raw_file(tmp_path / "good.safetensors", None, b"\0" * 4, compact({"a": "ok"})), layouts)
    assert layouts.sections  # the section is known: the next file with it takes the layout path
    p = raw_file(tmp_path / "bad.safetensors", None, b"\0" * 4, compact({"a": value}))
    with pytest.raises(AdapterFileError) as full:
        read_header(p)
    for known in (layouts, None):
        with pytest.raises(AdapterFileError) as quick:
            read_quick_header(p, known)
        assert (quick.value.reason, quick.value.key, quick.value.path) == (full.value.reason, "a", str(p))


def test_offsets_that_are_not_plain_integers_are_refused(tmp_path: Path) -> None:
    p = raw_file(tmp_path / "f.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}}, b"\0" * 4)
    with pytest.raises(AdapterFileError, match="bad data_offsets"):
        read_quick_header(p)


def test_a_name_that_looks_like_an_entry_does_not_fool_the_count(tmp_path: Path) -> None:
    name = 'x"data_offsets":[0,99]"shape":['
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"m": '"data_offsets":[0,9]'}}
    q = read_quick_header(raw_file(tmp_path / "n.safetensors", header, b"\0" * 4))
    assert q.shapes[name] == (1,) and q.metadata["m"].startswith('"data')
    with pytest.raises(AdapterFileError, match="truncated or padded"):
        read_quick_header(raw_file(tmp_path / "t.safetensors", header, b"\0" * 3))


def test_a_folder_named_like_a_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    for read in (read_quick_header, read_header):
        with pytest.raises(AdapterFileError, match="is a directory"):
            read(folder)


def test_a_header_longer_than_the_first_read_is_read_whole(tmp_path: Path) -> None:
    keys = {f"lora_unet_block_{i}_{'x' * 200}.lora_down.weight": (1, 1) for i in range(600)}  # ~170 kB of header
    p = write_lora(tmp_path / "big.safetensors", {"note": "y" * 100_000}, keys=keys)
    q, full = read_quick_header(p), read_header(p)
    assert q.metadata == full.metadata and len(q.shapes) == 600 and q.data_offset == full.data_offset > 64 * 1024
