"""The gallery routes carry each card's use count and last-use time, and the polled state changes
when a generation is recorded, so an open page re-sorts without a rescan."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from loraprompt.library import Library
from loraprompt.ui.gallery_service import GalleryService
from loraprompt.ui.routes import mount_gallery_routes

API = "/loraprompt/gallery"


def client(folder: Path, cache: Path) -> tuple[Library, TestClient]:
    library = Library(folder, cache / "lib", persist=False, settle_s=0.0)
    app = FastAPI()
    mount_gallery_routes(app, GalleryService(library, lambda: "sdxl", cache / "thumbs"))
    return library, TestClient(app)


def by_name(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["id"] for c in doc["cards"]}


def test_cards_and_usage_routes_follow_recorded_generations(gallery_folder: Path, tmp_path: Path) -> None:
    library, http = client(gallery_folder, tmp_path)
    doc = http.get(f"{API}/cards").json()
    ids = by_name(doc)
    assert doc["usage"] == {}
    stamp = http.get(f"{API}/state").json()["usage_stamp"]
    assert stamp == doc["usage_stamp"]

    start_ms = time.time_ns() // 1_000_000
    library.note_use([str(gallery_folder / "styles" / "watercolor.safetensors"), str(gallery_folder / "editable.safetensors")])
    library.note_use([str(gallery_folder / "styles" / "watercolor.safetensors")])
    state = http.get(f"{API}/state").json()
    assert state["usage_stamp"] != stamp
    usage = http.get(f"{API}/usage").json()
    assert usage["stamp"] == state["usage_stamp"]
    assert set(usage["usage"]) == {ids["watercolor"], ids["editable"]}
    uses, last = usage["usage"][ids["watercolor"]]
    assert uses == 2 and start_ms <= last <= time.time_ns() // 1_000_000
    assert usage["usage"][ids["editable"]][0] == 1
    assert http.get(f"{API}/cards").json()["usage"] == usage["usage"]
    assert http.get(f"{API}/state").json()["usage_stamp"] == state["usage_stamp"]  # unchanged without a generation


def test_refresh_keeps_the_usage(gallery_folder: Path, tmp_path: Path) -> None:
    library, http = client(gallery_folder, tmp_path)
    library.note_use([str(gallery_folder / "characters" / "catgirl.safetensors")])
    r = http.post(f"{API}/refresh", content=json.dumps({}),
                  headers={"X-LoraPrompt": "1", "Content-Type": "application/json"})
    doc = r.json()
    card = by_name(doc)["catgirl"]
    assert r.status_code == 200 and list(doc["usage"]) == [card]
    assert doc["usage"][card][0] == 1 and doc["usage"][card][1] > 0
