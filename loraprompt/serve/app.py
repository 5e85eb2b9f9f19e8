"""The FastAPI application: both APIs behind optional HTTP basic auth (A1111's `--api-auth`),
CORS only when asked, requests that a browser marks cross-site refused unless CORS allows their
origin, and every `ServeError` answered with its status and the field it names."""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import Request

from loraprompt.serve.errors import ServeError
from loraprompt.serve.service import Service


def parse_auth(spec: str | None) -> dict[str, str]:
    """`user:pass[,user2:pass2]` (A1111's --api-auth) -> {user: password}; ValueError when malformed."""
    users: dict[str, str] = {}
    for pair in (spec or "").split(","):
        if not pair.strip():
            continue
        user, sep, password = pair.strip().partition(":")
        if not sep or not user:
            raise ValueError(f"--api-auth expects user:password[,user2:password2], got {pair.strip()!r}")
        users[user] = password
    return users


def _auth_dependency(users: dict[str, str]) -> Any:
    from fastapi import HTTPException

    def check(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            known = users.get(user)
            if known is not None and secrets.compare_digest(known.encode(), password.encode()):
                return
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return check


def cors_allows(origins: list[str] | None, regex: str | None) -> Callable[[str], bool]:
    """Whether an origin is one that CORS was asked to allow (`--cors-allow-origins[-regex]`)."""
    exact, pattern = set(origins or ()), re.compile(regex) if regex else None
    return lambda origin: "*" in exact or origin in exact or (pattern is not None and pattern.fullmatch(origin) is not None)


def _same_site_dependency(allowed: Callable[[str], bool]) -> Any:
    """Refuse a request that changes something (not GET/HEAD/OPTIONS) when the browser that sent it
    says it comes from another site (`Sec-Fetch-Site: cross-site`) whose origin CORS does not allow.
    Such a page cannot read the answer, but a body-less POST (interrupt, skip, refresh) needs no
    preflight, so without this any web page a user opens could stop their generations. Clients
    that are not browsers (webuiapi, SillyTavern's server) send no such header and are not affected."""
    from fastapi import HTTPException

    def check(request: Request) -> None:
        if request.method in ("GET", "HEAD", "OPTIONS") or request.headers.get("sec-fetch-site") != "cross-site":
            return
        origin = request.headers.get("origin", "")
        if origin and allowed(origin):
            return
        raise HTTPException(403, f"a cross-site request from {origin[:100] or 'another site'} is refused; allow its "
                                 "origin with --cors-allow-origins to call this API from that page")

    return check


def add_api(app: Any, service: Service, *, api_auth: str | None = None,
            allowed_origin: Callable[[str], bool] | None = None) -> None:
    """Add /sdapi/v1/* and /predictions to `app` (a FastAPI app), behind basic auth when given;
    requests a browser sends from another site are refused unless `allowed_origin` allows theirs."""
    from fastapi import APIRouter, Depends
    from fastapi.responses import JSONResponse

    from loraprompt.serve import predictions, sdapi, sdapi_img2img, sdapi_lists

    users = parse_auth(api_auth)
    checks = [Depends(_same_site_dependency(allowed_origin or (lambda _origin: False)))]
    router = APIRouter(dependencies=[*checks, Depends(_auth_dependency(users))] if users else checks)
    sdapi.add_routes(router, service)
    sdapi_img2img.add_routes(router, service)
    sdapi_lists.add_routes(router, service)
    predictions.add_routes(router, service)
    app.include_router(router)

    async def serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        if exc.status == 500 and request.url.path.startswith("/sdapi/"):
            # A1111's handle_exception: the exception's type, empty detail/body, the message in errors.
            # Only a failed generation: a full queue (503, ours, A1111 has none) keeps {detail: [...]}
            cause = exc.message.removeprefix("generation failed: ").partition(":")[0]
            return JSONResponse({"error": cause if cause.isidentifier() else "RuntimeError", "detail": "", "body": "",
                                 "errors": exc.message}, status_code=exc.status)
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)

    app.add_exception_handler(ServeError, serve_error)

    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException

    async def unreadable_body(request: Request, exc: Exception) -> Any:
        # FastAPI answers a body that is not UTF-8 with 400; on our routes it is malformed JSON like any other
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400 and request.url.path.startswith(("/sdapi/", "/predictions")):
            return JSONResponse({"detail": [{"loc": ["body"], "msg": f"malformed JSON: {exc.detail}",
                                             "type": "json_invalid"}]}, status_code=422)
        return await http_exception_handler(request, exc)  # type: ignore[arg-type]

    app.add_exception_handler(HTTPException, unreadable_body)

    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own answer echoes the input, and a NaN or Infinity in it (Python's json reads
        # them) cannot be written back as JSON: that was a 500
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.state.loraprompt_service = service


def _finite(value: Any) -> Any:
    """`value` with every non-finite float written as text (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def build_app(service: Service, *, api_auth: str | None = None, cors_origins: list[str] | None = None,
              cors_origin_regex: str | None = None) -> Any:
    """A FastAPI app serving both APIs (what `loraprompt serve` runs)."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    app = FastAPI(title="loraprompt", description="Automatic1111-compatible and Replicate-style APIs",
                  docs_url="/docs", redoc_url=None)
    if cors_origins or cors_origin_regex:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins or [], allow_origin_regex=cors_origin_regex,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    add_api(app, service, api_auth=api_auth, allowed_origin=cors_allows(cors_origins, cors_origin_regex))

    @app.get("/health-check")
    def health() -> dict[str, Any]:
        return {"status": "READY", "model": service.model.name, "queued": service.backend.pending}

    return app


def mount_api(app: Any, engine: Any, **options: Any) -> Service:
    """Serve both APIs inside another FastAPI app (the web UI) on its model's engine: the UI and
    the API share the model's one queue (Txt2Img serializes generations)."""
    service = Service(engine, **options)
    add_api(app, service)
    return service
