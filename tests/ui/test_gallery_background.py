"""The gallery's background work: duplicate groups found by hashing only the files that can be in
one, with progress in the polled state; a poll that costs the same whatever the library's size;
and the thumbnail cache pruned by age and size."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from loraprompt.library import Library
from loraprompt.ui import cards
from loraprompt.ui.gallery_service import GalleryService
from loraprompt.ui.gallery_thumbs import ThumbCache
from loraprompt.ui.routes import mount_gallery_routes

from .conftest import write_lora

API = "/loraprompt/gallery"
_opened: list[str] | None = None  # paths opened while a test records (the `open` audit event)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str):
        _opened.append(args[0])


sys.addaudithook(_audit)


def served(folder: Path, cache: Path) -> tuple[GalleryService, TestClient]:
    service = GalleryService(Library(folder, cache / "lib", settle_s=0.0), lambda: None, cache / "thumbs")
    app = FastAPI()
    mount_gallery_routes(app, service)
    return service, TestClient(app)


def wait_for_hashing(http: TestClient) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = http.get(f"{API}/state").json()
        if not state["hashing"]["running"]:  # the first poll starts it
            return state
        time.sleep(0.05)
    raise AssertionError(f"hashing did not finish: {state}")


def test_duplicate_groups_are_found_in_the_background_and_served(gallery_folder: Path, tmp_path: Path) -> None:
    shutil.copy2(gallery_folder / "editable.safetensors", gallery_folder / "styles" / "editable_copy.safetensors")
    write_lora(gallery_folder / "unique.safetensors", {"lora_unet_x.lora_down.weight": (3, 5)})  # no other has its size
    past = time.time() - 60  # files minutes old: the disk cache keeps what it learns about them
    for path in gallery_folder.rglob("*.safetensors"):
        os.utime(path, (past, past))
    service, http = served(gallery_folder, tmp_path)
    ids = {c["name"]: c["id"] for c in http.get(f"{API}/cards").json()["cards"]}
    state = wait_for_hashing(http)
    # read in full: of the files sharing a tensor-data size with another (all but `unique` here),
    # only those whose sampled first pass matches another's (the copy and its original)
    assert state["hashing"]["total"] == 2 and state["hashing"]["done"] == state["hashing"]["total"]
    hashed = {e.name for e in service.library.entries if service.library.hashes(e, compute=False)}
    assert hashed == {"editable", "editable_copy"} and len(ids) == 8
    doc = http.get(f"{API}/duplicates").json()
    assert {"kind": "same-file", "ids": [ids["editable"], ids["editable_copy"]]} in doc["groups"]
    assert all(len(g["ids"]) > 1 for g in doc["groups"])
    # the hashes are kept: a second gallery over the same cache reads no file to find the groups
    service.stop_background()
    global _opened
    again, http2 = served(gallery_folder, tmp_path)
    http2.get(f"{API}/cards")
    _opened = []
    try:
        wait_for_hashing(http2)  # its sampled pass takes every sample from the cache records
        assert [p for p in _opened if p.endswith(".safetensors")] == []
    finally:
        _opened = None
    assert http2.get(f"{API}/duplicates").json()["groups"] == doc["groups"]
    again.stop_background()


def test_a_poll_does_not_walk_the_cards(gallery_folder: Path, tmp_path: Path, monkeypatch: Any) -> None:
    service, http = served(gallery_folder, tmp_path)
    http.get(f"{API}/cards")
    wait_for_hashing(http)
    calls = {"records": 0, "usage": 0}
    record, usage = cards.card_record, service.library.usage
    monkeypatch.setattr(cards, "card_record", lambda *a, **k: (calls.__setitem__("records", calls["records"] + 1), record(*a, **k))[1])
    monkeypatch.setattr(service.library, "usage", lambda e: (calls.__setitem__("usage", calls["usage"] + 1), usage(e))[1])
    for _ in range(3):
        http.get(f"{API}/state")
    assert calls == {"records": 0, "usage": 0}
    (gallery_folder / "new.safetensors").write_bytes((gallery_folder / "editable.safetensors").read_bytes())
    service.library.refresh()
    http.get(f"{API}/state")
    assert calls["records"] == 0  # records are made when cards are asked for
    first = http.get(f"{API}/cards", params={"limit": 2}).json()
    assert calls["records"] == 2 and first["partial"] and first["total"] == 7
    http.get(f"{API}/cards")
    http.get(f"{API}/cards")
    assert calls["records"] == 7  # a change rebuilds the cards once (6 + the new file), the first two kept
    service.stop_background()


def test_thumbnail_cache_pruned_by_age_then_size(tmp_path: Path) -> None:
    thumbs = ThumbCache(tmp_path / "thumbs")
    now = time.time()
    files = []
    for i, age_days in enumerate((40, 10, 5, 1)):
        path = tmp_path / "thumbs" / f"{i:02d}" / f"{i}.webp"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age_days * 86400,) * 2)
        files.append(path)
    (tmp_path / "thumbs" / "notes.txt").write_text("not a thumbnail")
    assert thumbs.prune(now=now) == 1 and not files[0].exists()  # unused for over 30 days
    assert thumbs.prune(max_bytes=2000, now=now) == 1 and not files[1].exists()  # then the least recently served
    assert files[2].exists() and files[3].exists() and (tmp_path / "thumbs" / "notes.txt").exists()
