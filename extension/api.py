"""The HTTP routes A1111 users script against, served when the built-in Lora extension is off:
`GET /sdapi/v1/loras` ({name, alias, path, metadata} per LoRA, as A1111 returns them) and
`POST /sdapi/v1/refresh-loras` (rescan; returns null)."""

from __future__ import annotations

from typing import Any

from loraprompt.library.safetensors_header import decoded_metadata as header_metadata

from .runtime import Runtime, library_entries


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
