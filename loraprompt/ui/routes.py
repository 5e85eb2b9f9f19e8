"""The gallery's HTTP routes, mounted on the FastAPI app that serves gradio (3.41 and current).

Files are named by card id, never by path: previews and thumbnails come only from the LoRA folders
through the library's path policy, only as images, with `nosniff`. Routes that change something
(refresh, metadata, preview-image) and the insert route need a same-origin JSON POST carrying `X-LoraPrompt: 1`,
which a cross-site page cannot send without a CORS preflight that is never granted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraprompt.library.cards import json_for_script
from loraprompt.ui.gallery_preview import MAX_IMAGE_BYTES, set_preview
from loraprompt.ui.gallery_service import BadRequest, GalleryService, NotFound
from loraprompt.ui.gallery_thumbs import ThumbnailError
from loraprompt.ui.gallery_usage import usage_document, with_usage

DEFAULT_PREFIX = "loraprompt/gallery"
STATIC_DIR = Path(__file__).parent / "static"
# The gallery's script is split into parts that share window.LoraPromptGalleryParts: load them in
# this order (`gallery.loader_js` and the extension's javascript/loraprompt.js do).
SCRIPTS = ("gallery-base.js", "gallery-grid.js", "gallery-cards.js", "gallery-dialogs.js", "gallery-duplicates.js", "gallery.js")
STATIC_FILES = {**{name: "text/javascript; charset=utf-8" for name in SCRIPTS}, "gallery.css": "text/css; charset=utf-8"}
MAX_BODY = 1024 * 1024
MAX_IMAGE_BODY = MAX_IMAGE_BYTES * 4 // 3 + 64 * 1024  # a base64 data URL of the largest preview, and the rest
MAX_FIRST = 2000  # cards a first page may ask for
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "same-origin"}


def _json(value: Any, status: int = 200) -> Response:
    text = value if isinstance(value, str) else json_for_script(value)
    return Response(text, status_code=status, media_type="application/json",
                    headers={**SAFE_HEADERS, "Cache-Control": "no-store"})


def _error(status: int, message: str) -> Response:
    return _json({"detail": message}, status)


async def _post_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any] | Response:
    """The JSON object of a same-origin gallery POST, or the error response refusing it."""
    if request.headers.get("x-loraprompt") != "1":
        return _error(403, "missing X-LoraPrompt header: cross-site requests are refused")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        return _error(403, f"origin {origin[:100]} is not this server: cross-site requests are refused")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error(415, "expected application/json")
    raw = await request.body()
    if len(raw) > limit:
        return _error(413, f"request body over {limit} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
        return _error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    return body


def gallery_router(service: GalleryService, prefix: str = DEFAULT_PREFIX) -> APIRouter:
    """The routes of one gallery under `/<prefix>/`."""
    router = APIRouter(prefix="/" + prefix.strip("/"))

    def guarded(fn: Any) -> Any:
        try:
            return fn()
        except NotFound as exc:
            return _error(404, str(exc))
        except (BadRequest, ThumbnailError) as exc:
            return _error(422, str(exc))

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return _error(404, "no such file")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                            headers={**SAFE_HEADERS, "Cache-Control": "no-cache"})

    @router.get("/cards")
    def cards_route(limit: int = 0, sort: str = "name", desc: bool = False) -> Response:
        # limit: the first cards only (in the page's sort), marked "partial": a big library's
        # page shows them while the whole list is made and sent
        if limit > 0:
            doc, first = service.first_cards(min(limit, MAX_FIRST), sort, desc)
            return _json(with_usage(service, json_for_script(doc), first))
        return _json(with_usage(service, service.cards_json()))

    @router.get("/state")
    def state() -> Response:
        return _json(service.state())

    @router.get("/duplicates")
    def duplicates() -> Response:
        return _json(service.duplicates())

    @router.get("/usage")
    def usage() -> Response:
        return _json(usage_document(service))

    @router.get("/details")
    def details(id: str = "") -> Response:
        return guarded(lambda: _json(service.details(id)))

    def image(path: Path, kind: str) -> Response:
        # opened here, so a file deleted or replaced after its check (a thumbnail pruned, a preview
        # deleted while the page loads) is a 404 or the file checked, never a 500 halfway through
        try:
            f = open(path, "rb")  # closed by the stream
            size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            return _error(404, f"{path.name}: {exc.strerror or 'cannot be read'}")

        def chunks() -> Iterator[bytes]:
            with f:
                while block := f.read(1 << 20):
                    yield block

        return StreamingResponse(chunks(), media_type=kind, headers={
            **SAFE_HEADERS, "Cache-Control": "private, max-age=86400", "Content-Length": str(size)})

    @router.get("/thumb")
    def thumb(id: str = "") -> Response:
        return guarded(lambda: image(service.thumbnail(id), "image/webp"))

    @router.get("/preview")
    def preview(id: str = "") -> Response:
        return guarded(lambda: image(*service.preview_file(id)))

    @router.post("/insert")
    async def insert(request: Request) -> Response:
        body = await _post_body(request)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(guarded, lambda: _json(service.insert(body)))

    @router.post("/metadata")
    async def metadata(request: Request) -> Response:
        body = await _post_body(request)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(guarded, lambda: _json(service.save_metadata(body.get("id"), body.get("values"))))

    @router.post("/preview-image")
    async def preview_image(request: Request) -> Response:
        body = await _post_body(request, limit=MAX_IMAGE_BODY)
        if isinstance(body, Response):
            return body
        return await run_in_threadpool(guarded, lambda: _json(set_preview(service, body.get("id"), body.get("image"))))

    @router.post("/refresh")
    async def refresh(request: Request) -> Response:
        body = await _post_body(request)
        if isinstance(body, Response):
            return body
        return _json(await run_in_threadpool(lambda: with_usage(service, service.refresh())))

    return router


def mount_gallery_routes(app: FastAPI, service: GalleryService, prefix: str = DEFAULT_PREFIX) -> None:
    """Add the gallery routes to `app`, ahead of any catch-all route the app already has."""
    before = len(app.router.routes)
    app.include_router(gallery_router(service, prefix))
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
