"""The details view of one file: its header metadata as display rows (A1111's order, nested JSON
expanded to `a/b` rows, every value capped) and the cover image embedded in the header."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loraprompt.library.metadata import MAX_SHOWN, cap
from loraprompt.library.paths import image_kind
from loraprompt.library.safetensors_header import read_header

FIRST_KEYS = ("ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images", "ss_tag_frequency")
MAX_ROWS = 1000
MAX_NESTED_JSON = 1 << 20  # characters of a metadata value parsed as JSON for display
MAX_COVER_BYTES = 8 << 20
COVER_KEY = "ssmd_cover_images"


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if len(rows) >= MAX_ROWS:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, rows)
    else:
        rows.append((cap(prefix, 300), cap(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), MAX_SHOWN)))


def _expand(key: str, value: dict[str, Any], rows: list[tuple[str, str]]) -> bool:
    """Add the `key/sub` rows of `value`; False, adding none, when it is too deep to expand."""
    before = len(rows)
    try:
        _flatten(key, value, rows)
    except RecursionError:
        del rows[before:]
        return False
    return True


def metadata_rows(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key, value) rows to show: A1111's first keys, then the rest sorted; JSON objects expanded
    to `key/sub` rows; the embedded cover images summarised; at most MAX_ROWS rows."""
    order = [k for k in FIRST_KEYS if k in metadata] + sorted(k for k in metadata if k not in FIRST_KEYS)
    rows: list[tuple[str, str]] = []
    for key in order:
        value = metadata[key]
        if key == COVER_KEY:
            rows.append((key, f"{len(value)} characters of embedded images"))
            continue
        parsed: Any = None
        if value[:1] == "{" and len(value) <= MAX_NESTED_JSON:
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
                parsed = None
        if not (isinstance(parsed, dict) and _expand(key, parsed, rows)):
            rows.append((key, cap(value)))
        if len(rows) >= MAX_ROWS:
            break
    return rows[:MAX_ROWS]


def _cover_text(metadata: Mapping[str, str]) -> str | None:
    """The base64 text of the first image in `ssmd_cover_images` (a `data:` URL's payload), or None
    when there is none or it is over MAX_COVER_BYTES."""
    raw = metadata.get(COVER_KEY)
    if not raw or len(raw) > MAX_COVER_BYTES * 2:
        return None
    try:
        images = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(images, list) or not images or not isinstance(images[0], str):
        return None
    text = images[0].split(",", 1)[1] if images[0].startswith("data:") else images[0]
    return None if len(text) > MAX_COVER_BYTES * 4 // 3 + 4 else text


def cover_image(metadata: Mapping[str, str]) -> tuple[bytes, str] | None:
    """(bytes, content type) of the first image in `ssmd_cover_images`, or None when there is
    none or it is not valid base64 of a PNG/JPEG/WebP/GIF under MAX_COVER_BYTES."""
    text = _cover_text(metadata)
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    kind = image_kind(data[:16])
    return (data, kind) if kind else None


def cover_kind(metadata: Mapping[str, str]) -> str | None:
    """The content type of the first image in `ssmd_cover_images` from its first 24 base64
    characters (the signature is in its first 16 bytes), without decoding megabytes during a scan.
    The same verdict as `cover_image` except for a cover whose base64 breaks after its signature."""
    text = _cover_text(metadata)
    if text is None or len(text) % 4:
        return None
    try:
        head = base64.b64decode(text[:24], validate=True)
    except (binascii.Error, ValueError):
        return None
    return image_kind(head[:16])


def file_details(path: str | Path) -> dict[str, Any]:
    """Rows and tensor count from a fully validated header read of `path` (AdapterFileError when
    the file is broken)."""
    header = read_header(path)
    return {
        "rows": metadata_rows(header.metadata),
        "tensors": len(header.tensors),
        "data_offset": header.data_offset,
        "file_size": header.file_size,
        "cover": cover_image(header.metadata),
    }
