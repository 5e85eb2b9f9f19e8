"""A guard in front of A1111's preview route, `GET /sd_extra_networks/thumb?filename=...`.

A1111 v1.10.1 (modules/ui_extra_networks.py, `fetch_file`) serves a file when a preview folder is
among `Path(filename).absolute().parents`. `absolute()` keeps `..`, so `<models/Lora>/../../x.png`
passes and any image the server can read is served, through every page's folders (checkpoints,
embeddings, LoRAs), with or without loraprompt. Once the server runs, middleware can no longer be
added, but Starlette matches routes in list order on each request: the guard is a route for the same
path and method put ahead of A1111's. It refuses a filename that is not below a preview folder
without a `..` part, and hands everything else to the endpoint it shadows (A1111's `fetch_file`), so
A1111's answers (404 for a missing file, its extension check) are otherwise unchanged. Symlinks are
not resolved: a symlinked subfolder under a folder keeps working, as in A1111 and
loraprompt.library.paths (rule 2).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("loraprompt")

THUMB_PATH = "/sd_extra_networks/thumb"
MARK = "loraprompt_thumb_guard"  # an attribute of the guard's endpoint: a second install sees it
_reported = False  # a failure to install is said once per process


def below(filename: str, dirs: Iterable[str]) -> bool:
    """Whether `filename` is below one of `dirs` as it is spelled: under the folder when both are made
    absolute as A1111 makes them (nothing resolved), with no `..` part below the folder."""
    path = Path(filename).absolute()
    for folder in dirs:
        root = Path(folder).absolute()
        if root in path.parents and ".." not in path.relative_to(root).parts:
            return True
    return False


def refusal(filename: str) -> str:
    """The detail of a refused request (A1111's own wording for a file outside the folders)."""
    return f"File cannot be fetched: {filename}. Must be in one of directories registered by extra pages."


def make_guard(fetch_file: Callable[..., Any]) -> Callable[..., Any]:
    """The guard's endpoint: refuse (403) a filename outside every preview folder A1111 holds at
    request time (`ui_extra_networks.allowed_dirs`, which A1111 refills as pages register), else
    `fetch_file(filename)`. Plain function: FastAPI runs it in its threadpool, as it runs A1111's."""
    from fastapi import HTTPException
    from modules import ui_extra_networks

    def thumb_guard(filename: str = "") -> Any:
        if not below(filename, list(ui_extra_networks.allowed_dirs)):
            raise HTTPException(status_code=403, detail=refusal(filename))
        return fetch_file(filename)

    setattr(thumb_guard, MARK, True)
    return thumb_guard


def _thumb_route(routes: list[Any]) -> tuple[int, Any] | None:
    """The first route answering GET THUMB_PATH, with its index."""
    for index, route in enumerate(routes):
        if getattr(route, "path", None) == THUMB_PATH and "GET" in (getattr(route, "methods", None) or ()):
            return index, route
    return None


def _install(app: Any) -> bool:
    routes = getattr(getattr(app, "router", None), "routes", None)
    if not isinstance(routes, list):
        return False  # not a Starlette app (the tests' stand-in)
    found = _thumb_route(routes)
    if found is None:
        return False  # no such route here (another A1111 version, Forge)
    index, route = found
    endpoint = getattr(route, "endpoint", None)
    if getattr(endpoint, MARK, False):
        return True  # app_started ran twice
    from modules import ui_extra_networks

    if not callable(endpoint) or not hasattr(ui_extra_networks, "allowed_dirs"):
        return False
    if list(inspect.signature(endpoint).parameters) != ["filename"]:
        return False  # not the endpoint this guard knows how to call: leave it alone
    guard = make_guard(endpoint)
    app.add_api_route(THUMB_PATH, guard, methods=["GET"], response_model=None, include_in_schema=False)
    at = next(i for i in range(len(routes) - 1, -1, -1) if getattr(routes[i], "endpoint", None) is guard)
    routes.insert(index, routes.pop(at))
    return True


def install(app: Any) -> bool:
    """Put the guard ahead of A1111's thumb route on `app` (A1111's FastAPI app, in app_started);
    returns whether the route is guarded now. Without that route, or when it is already guarded, it
    does nothing. It never raises: a failure leaves A1111's route as it was and is said once."""
    global _reported
    try:
        return _install(app)
    except Exception as e:
        if not _reported:
            _reported = True
            log.warning("loraprompt: could not guard %s against '..' in filenames (%s: %s); A1111's route is unchanged",
                        THUMB_PATH, type(e).__name__, e)
        return False
