"""The HTTP routes A1111 users script against, served when the built-in Lora extension is off:
`GET /sdapi/v1/loras` ({name, alias, path, metadata} per LoRA, as A1111 returns them) and
`POST /sdapi/v1/refresh-loras` (rescan; returns null)."""

from __future__ import annotations

import json
import os
from typing import Any

from loraprompt.errors import AdapterFileError
from loraprompt.library.safetensors_header import read_header

from .runtime import Runtime, library_entries

# path -> ((mtime_ns, size), metadata): the cards page and /sdapi/v1/loras ask for every file on
# every render, and A1111 keeps this metadata from its scan instead of reading each header again
_METADATA: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}


def header_metadata(path: str) -> dict[str, Any]:
    """A file's safetensors metadata, `{`-values JSON-decoded as A1111 does; {} when unreadable.
    Read once per version (mtime, size) of the file; each caller gets its own dict."""
    if not path.lower().endswith(".safetensors"):
        return {}
    try:
        st = os.stat(path)
    except OSError:
        return {}
    version = (st.st_mtime_ns, st.st_size)
    cached = _METADATA.get(path)
    if cached is None or cached[0] != version:
        cached = (version, _read_metadata(path))
        _METADATA[path] = cached
    return dict(cached[1])


def _read_metadata(path: str) -> dict[str, Any]:
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


def lora_list(runtime: Runtime) -> list[dict[str, Any]]:
    """The body of GET /sdapi/v1/loras."""
    return [
        {"name": e.name, "alias": e.alias, "path": e.path, "metadata": header_metadata(e.path)}
        for e in library_entries(runtime.library)
    ]


def add_routes(app: Any, runtime: Runtime) -> None:
    """Register both routes on A1111's FastAPI app, as plain functions: they read files, so FastAPI
    runs them in its threadpool instead of on the event loop every other request waits on."""

    @app.get("/sdapi/v1/loras")
    def get_loras() -> list[dict[str, Any]]:
        return lora_list(runtime)

    @app.post("/sdapi/v1/refresh-loras")
    def refresh_loras() -> None:
        runtime.refresh()
