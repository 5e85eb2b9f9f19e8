"""The guard in front of A1111's preview route (extension/thumb_guard.py), on a real FastAPI app.

A1111's route is the stand-in's `ui_extra_networks.fetch_file`, whose body is A1111 v1.10.1's
verbatim, registered first as webui.py does (add_pages_to_demo, then app_started). Each refusal is
checked against the same app without the guard, where A1111's code serves the file."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import FakeApp, Webui
from .test_generation import started

fastapi = pytest.importorskip("fastapi")
testclient = pytest.importorskip("fastapi.testclient")

THUMB = "/sd_extra_networks/thumb"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def a1111_app() -> Any:
    """A FastAPI app with A1111's thumb route, as webui.py leaves it before app_started."""
    app = fastapi.FastAPI()
    app.add_api_route(THUMB, importlib.import_module("modules.ui_extra_networks").fetch_file, methods=["GET"])
    return app


def client(guarded: bool) -> Any:
    app = a1111_app()
    if guarded:  # every app_started callback, loraprompt's among them
        importlib.import_module("modules.script_callbacks").app_started_callback(None, app)
    return testclient.TestClient(app, raise_server_exceptions=False)


def thumb_routes(app: Any) -> list[Any]:
    return [r for r in app.router.routes if getattr(r, "path", None) == THUMB]


@pytest.fixture
def tree(webui: Webui) -> Path:
    """<tmp>/secret.png outside every folder; models/Lora (loraprompt's page, the only preview
    folder) with A.png, sub/, note.txt and linked/ -> <tmp>/outside holding B.png."""
    started(webui)
    root = webui.lora_dir
    (webui.root / "secret.png").write_bytes(PNG)
    (root / "A.png").write_bytes(PNG + b"A")
    (root / "note.txt").write_text("not an image")
    (root / "sub").mkdir()
    (webui.root / "outside").mkdir()
    (webui.root / "outside" / "B.png").write_bytes(PNG + b"B")
    try:
        os.symlink(webui.root / "outside", root / "linked", target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    assert importlib.import_module("modules.ui_extra_networks").allowed_dirs == {str(root)}
    return root


def escapes(root: Path) -> list[str]:
    """`..` spellings from models/Lora to <tmp>/secret.png (cwd is <tmp> for the relative ones)."""
    return [
        f"{root}/../../secret.png",
        f"{root}/sub/../../../secret.png",
        f"{root}/./sub//../../../secret.png",
        f"{root}/linked/../secret.png",  # the OS takes .. after following the link
        "models/Lora/../../secret.png",
    ]


def test_dot_dot_escapes_are_refused(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parents[1])
    plain, guarded = client(False), client(True)
    for name in escapes(tree):
        assert plain.get(THUMB, params={"filename": name}).status_code == 200, name  # A1111's hole
        answer = guarded.get(THUMB, params={"filename": name})
        assert answer.status_code == 403, name
        assert answer.json()["detail"] == f"File cannot be fetched: {name}. Must be in one of directories registered by extra pages."


@pytest.mark.parametrize("folder", ["models/Lora", "models/Lora/", "./models//Lora", "{abs}/"])
def test_escapes_are_refused_however_the_folder_is_spelled(tree: Path, monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    """A page may give a relative folder or one with a trailing slash: A1111 compares them made
    absolute against the working directory, and so does the guard."""
    monkeypatch.chdir(tree.parents[1])
    allowed = importlib.import_module("modules.ui_extra_networks").allowed_dirs
    allowed.clear()
    allowed.add(folder.format(abs=tree))
    plain, guarded = client(False), client(True)
    for name in [*escapes(tree), f"{folder.format(abs=tree)}/../../secret.png"]:
        assert plain.get(THUMB, params={"filename": name}).status_code == 200, name
        assert guarded.get(THUMB, params={"filename": name}).status_code == 403, name
    for name in [f"{tree}/A.png", "models/Lora/A.png", f"{folder.format(abs=tree)}/A.png", "models/Lora/linked/B.png"]:
        assert guarded.get(THUMB, params={"filename": name}).content == PNG + (b"B" if "linked" in name else b"A"), name


def test_outside_every_folder_is_refused_alike_whether_the_file_exists_or_not(tree: Path) -> None:
    """A1111 answers 404 before its folder check, so an escape told which files exist; and a file
    outside the folders spelled without `..` raised a ValueError (a 500 with a traceback)."""
    plain, guarded = client(False), client(True)
    secret, nothing = f"{tree}/../../secret.png", f"{tree}/../../nothing.png"
    assert [plain.get(THUMB, params={"filename": n}).status_code for n in (secret, nothing)] == [200, 404]
    assert plain.get(THUMB, params={"filename": str(tree.parents[1] / "secret.png")}).status_code == 500
    for name in (secret, nothing, str(tree.parents[1] / "secret.png"), ""):
        assert guarded.get(THUMB, params={"filename": name}).status_code == 403, name


def test_previews_are_answered_as_without_the_guard(tree: Path) -> None:
    """A preview, one in a symlinked subfolder leading out of the root (A1111 and loraprompt's path
    policy serve it), a missing file (A1111's 404) and a non-image (A1111's ValueError, a 500)."""
    plain, guarded = client(False), client(True)
    names = {f"{tree}/A.png": 200, f"{tree}/linked/B.png": 200, f"{tree}/sub/missing.png": 404, f"{tree}/note.txt": 500}
    for name, status in names.items():
        want, got = plain.get(THUMB, params={"filename": name}), guarded.get(THUMB, params={"filename": name})
        assert (got.status_code, got.content, got.headers.get("content-type")) == (status, want.content, want.headers.get("content-type")), name
        assert want.status_code == status, name
    assert guarded.get(THUMB, params={"filename": f"{tree}/linked/B.png"}).content == PNG + b"B"


def test_folders_are_read_at_request_time(tree: Path) -> None:
    """A1111 refills ui_extra_networks.allowed_dirs as pages register; another page's folder
    (checkpoints here) is guarded too."""
    guarded = client(True)
    models = tree.parent / "Stable-diffusion"
    models.mkdir()
    (models / "m.png").write_bytes(PNG)
    assert guarded.get(THUMB, params={"filename": f"{models}/m.png"}).status_code == 403
    importlib.import_module("modules.ui_extra_networks").allowed_dirs.add(str(models))
    assert guarded.get(THUMB, params={"filename": f"{models}/m.png"}).status_code == 200
    assert guarded.get(THUMB, params={"filename": f"{models}/../../secret.png"}).status_code == 403


def test_installed_once_ahead_of_a1111s_route(tree: Path) -> None:
    guard = importlib.import_module("loraprompt_a1111.thumb_guard")
    fetch_file = importlib.import_module("modules.ui_extra_networks").fetch_file
    app = a1111_app()
    app.add_api_route("/other", lambda: None, methods=["GET"])
    assert guard.install(app) and guard.install(app)  # app_started twice
    importlib.import_module("modules.script_callbacks").app_started_callback(None, app)
    routes = thumb_routes(app)
    assert len(routes) == 2 and getattr(routes[0].endpoint, guard.MARK) and routes[1].endpoint is fetch_file
    assert app.router.routes.index(routes[0]) < app.router.routes.index(routes[1])
    assert app.openapi()["paths"][THUMB]["get"]["operationId"].startswith("fetch_file")  # /docs lists A1111's route only


def test_without_the_route_nothing_changes(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = importlib.import_module("loraprompt_a1111.thumb_guard")
    empty = fastapi.FastAPI()
    before = list(empty.router.routes)
    assert not guard.install(empty) and empty.router.routes == before
    assert not guard.install(FakeApp())  # the stand-in app of the other tests: no router
    other = fastapi.FastAPI()  # a thumb route this guard does not know how to call
    other.add_api_route(THUMB, lambda filename="", page="": None, methods=["GET"])
    assert not guard.install(other) and len(thumb_routes(other)) == 1
    assert caplog.records == []


def test_a_failed_install_is_said_once_and_leaves_the_route(tree: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = importlib.import_module("loraprompt_a1111.thumb_guard")
    app = a1111_app()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no more routes")

    monkeypatch.setattr(app, "add_api_route", broken)
    with caplog.at_level(logging.WARNING, logger="loraprompt"):
        assert not guard.install(app)
        importlib.import_module("modules.script_callbacks").app_started_callback(None, app)  # start-up goes on
    assert [r.getMessage() for r in caplog.records] == [
        f"loraprompt: could not guard {THUMB} against '..' in filenames (RuntimeError: no more routes); A1111's route is unchanged"
    ]
    assert [r.endpoint for r in thumb_routes(app)] == [importlib.import_module("modules.ui_extra_networks").fetch_file]
