"""The gallery's HTTP routes on a real FastAPI app: what is served, what is refused (robustness
items 18-22), and that actions reach the library and the prompt."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from loraprompt.library import Library
from loraprompt.ui.gallery_service import GalleryService
from loraprompt.ui.routes import mount_gallery_routes

from .conftest import SD1_KEYS, XSS, write_lora, write_preview

API = "/loraprompt/gallery"
POST_HEADERS = {"X-LoraPrompt": "1", "Content-Type": "application/json"}


class Gallery:
    def __init__(self, folder: Path, cache: Path, family: str | None = "sdxl", auto_check_s: float = 2.0) -> None:
        self.library = Library(folder, cache / "lib", persist=False, settle_s=0.0, auto_check_s=auto_check_s)
        self.family = family
        self.service = GalleryService(self.library, lambda: self.family, cache / "thumbs")
        app = FastAPI()
        mount_gallery_routes(app, self.service)
        self.client = TestClient(app)

    def cards(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.client.get(f"{API}/cards").json()["cards"]}

    def post(self, route: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client.post(f"{API}/{route}", content=json.dumps(body), headers=headers or POST_HEADERS)


@pytest.fixture
def gallery(gallery_folder: Path, tmp_path: Path) -> Gallery:
    return Gallery(gallery_folder, tmp_path / "cache")


def test_cards_document_lists_every_file_with_the_loaded_family(gallery: Gallery) -> None:
    r = gallery.client.get(f"{API}/cards")
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    assert "<img" not in r.text  # names are \\u-escaped JSON
    doc = r.json()
    assert doc["family"] == "sdxl"
    assert {c["name"] for c in doc["cards"]} == {"catgirl", "watercolor", "sketchy_lines", "ink_wash", "editable", XSS}
    gallery.family = "sd9"
    assert gallery.client.get(f"{API}/state").json()["family"] is None  # unknown families filter nothing


def test_a_first_page_is_the_first_cards_in_the_pages_sort(gallery: Gallery) -> None:
    """`/cards?limit=N` sends the first N cards in the page's sort (name, date or size, either
    way; other sorts take the library's order), marked partial with the total, each the same
    record as in the whole list, and the usage of those cards only."""
    every = gallery.client.get(f"{API}/cards").json()
    by_id = {c["id"]: c for c in every["cards"]}
    collate = sorted(by_id.values(), key=lambda c: (c["name"].casefold(), c["id"]))
    for sort, key in (("name", lambda c: c["name"].casefold()), ("size", lambda c: c["size"]), ("date", lambda c: c["mtime"])):
        for desc in (False, True):
            doc = gallery.client.get(f"{API}/cards", params={"limit": 3, "sort": sort, "desc": str(desc).lower()}).json()
            assert doc["partial"] is True and doc["total"] == len(by_id) and doc["generation"] == every["generation"]
            assert [by_id[c["id"]] for c in doc["cards"]] == doc["cards"]
            ranked = sorted((key(c) for c in by_id.values()), reverse=desc)
            assert [key(c) for c in doc["cards"]] == ranked[:3], (sort, desc)
            assert "usage" in doc and "usage_stamp" in doc
    assert [c["name"] for c in gallery.client.get(f"{API}/cards", params={"limit": 3}).json()["cards"]] == [
        c["name"] for c in collate[:3]]
    walk = gallery.client.get(f"{API}/cards", params={"limit": 2, "sort": "uses"}).json()
    assert [c["id"] for c in walk["cards"]] == [c["id"] for c in every["cards"][:2]]
    whole = gallery.client.get(f"{API}/cards", params={"limit": 100}).json()
    assert whole["partial"] is False and len(whole["cards"]) == len(by_id)


def test_thumbnail_is_a_small_cached_webp(gallery: Gallery, tmp_path: Path) -> None:
    url = gallery.cards()["catgirl"]["thumb"]
    r = gallery.client.get(f"{API}/{url}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert r.headers["x-content-type-options"] == "nosniff"
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(r.content)) as im:
        assert max(im.size) == 256 and im.format == "WEBP"
    cached = list((tmp_path / "cache" / "thumbs").rglob("*.webp"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert gallery.client.get(f"{API}/{url}").content == r.content
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not redrawn


def test_preview_has_an_image_type_and_nosniff(gallery: Gallery) -> None:
    card_id = gallery.cards()["watercolor"]["id"]
    r = gallery.client.get(f"{API}/preview", params={"id": card_id})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff" and r.content[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize(
    "ref",
    ["../../etc/passwd", "0/../../x.png", "0/%2e%2e/%2e%2e/x.png", "0\\..\\..\\x.png", "/etc/passwd",
     "0/characters/catgirl.json", "0/characters/catgirl.safetensors\x00.png", "", "0/characters/catgirl.png"],
)
def test_files_are_named_by_card_id_only(gallery: Gallery, ref: str) -> None:
    for route in ("preview", "thumb", "details"):
        assert gallery.client.get(f"{API}/{route}", params={"id": ref}).status_code == 404


def test_sibling_folder_is_unreachable(gallery: Gallery, gallery_folder: Path) -> None:
    evil = gallery_folder.parent / "LoraEvil"
    evil.mkdir()
    write_preview(evil / "secret.png", (1, 2, 3))
    write_lora(evil / "secret.safetensors", SD1_KEYS)
    for ref in ("0/../LoraEvil/secret.png", "0/../LoraEvil/secret.safetensors", "../LoraEvil/secret.safetensors"):
        assert gallery.client.get(f"{API}/preview", params={"id": ref}).status_code == 404


def test_preview_swapped_for_a_symlink_after_the_scan_is_refused(gallery_folder: Path, tmp_path: Path) -> None:
    secret = write_preview(gallery_folder.parent / "secret.png", (1, 2, 3))
    g = Gallery(gallery_folder, tmp_path / "c2", auto_check_s=3600)  # the library has not noticed the swap
    card = g.cards()["catgirl"]
    preview = gallery_folder / "characters" / "catgirl.png"
    preview.unlink()
    preview.symlink_to(secret)  # resolved at request time: now outside every root
    assert g.client.get(f"{API}/preview", params={"id": card["id"]}).status_code == 404
    assert g.client.get(f"{API}/{card['thumb']}").status_code == 404


def test_a_preview_that_is_not_its_image_type_is_never_served(gallery_folder: Path, tmp_path: Path) -> None:
    write_lora(gallery_folder / "fake.safetensors", SD1_KEYS)
    (gallery_folder / "fake.png").write_text("<html><script>alert(1)</script></html>")
    g = Gallery(gallery_folder, tmp_path / "c3")
    card = g.cards()["fake"]
    r = g.client.get(f"{API}/preview", params={"id": card["id"]})
    assert r.status_code == 404 and "<script>" not in r.text


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_preview_gives_4xx(gallery_folder: Path, tmp_path: Path) -> None:
    write_lora(gallery_folder / "bomb.safetensors", SD1_KEYS)
    (gallery_folder / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    g = Gallery(gallery_folder, tmp_path / "c4")
    r = g.client.get(f"{API}/{g.cards()['bomb']['thumb']}")
    assert r.status_code == 422 and "pixels" in r.json()["detail"]


def test_corrupt_preview_gives_422(gallery_folder: Path, tmp_path: Path) -> None:
    write_lora(gallery_folder / "broken.safetensors", SD1_KEYS)
    (gallery_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    g = Gallery(gallery_folder, tmp_path / "c5")
    assert g.client.get(f"{API}/{g.cards()['broken']['thumb']}").status_code == 422


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (300, 200), color).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(("cover", "status"), [
    (base64.b64encode(_png_bytes((9, 200, 9))).decode(), 200),
    ("data:image/png;base64," + base64.b64encode(_png_bytes((9, 9, 200))).decode(), 200),
    ("%%%not-base64%%%", 422),
    (base64.b64encode(b"<svg onload=alert(1)>").decode(), 422),
])
def test_cover_image_in_the_header_becomes_the_thumbnail(gallery_folder: Path, tmp_path: Path, cover: str, status: int) -> None:
    write_lora(gallery_folder / "covered.safetensors", SD1_KEYS, {"ssmd_cover_images": json.dumps([cover])})
    g = Gallery(gallery_folder, tmp_path / "c6")
    card = g.cards()["covered"]
    details = g.client.get(f"{API}/details", params={"id": card["id"]}).json()
    assert details["preview"] == card["thumb"] and "Header metadata (1 rows)" in details["html"]
    if status != 200:  # not an image: no thumbnail URL that would fail (the card shows its letter)
        assert card["thumb"] is None
        return
    r = g.client.get(f"{API}/{card['thumb']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp" and r.content[8:12] == b"WEBP"


def test_details_list_every_header_key_escaped(gallery: Gallery) -> None:
    details = gallery.client.get(f"{API}/details", params={"id": gallery.cards()[XSS]["id"]}).json()
    assert "<th>ss_output_name</th>" in details["html"] and "<img" not in details["html"]
    assert details["preview"] is None and details["user"]["notes"] == XSS + "\nsecond line"


def test_insert_formats_the_tag_on_the_server(gallery: Gallery) -> None:
    card = gallery.cards()["catgirl"]
    body = {"id": card["id"], "te": 0.5, "unet": 0.7, "activation": True, "prompt": "a cat", "negative": "blurry"}
    r = gallery.post("insert", body).json()
    assert r["prompt"] == "a cat, <lora:catgirl:0.5:0.7>, catgirl, cat ears"
    assert r["negative"] == "blurry, extra tails" and r["action"] == "added"
    again = gallery.post("insert", {**body, "prompt": r["prompt"], "negative": r["negative"]}).json()
    assert (again["prompt"], again["negative"], again["action"]) == ("a cat", "blurry", "removed")


def test_same_stem_in_two_folders_inserts_the_folder_path(gallery_folder: Path, tmp_path: Path) -> None:
    write_lora(gallery_folder / "styles" / "catgirl.safetensors", SD1_KEYS, seed=11)
    g = Gallery(gallery_folder, tmp_path / "c7")
    doc = g.client.get(f"{API}/cards").json()["cards"]
    tags = sorted(c["tag_name"] for c in doc if c["name"] == "catgirl")
    assert tags == ["characters/catgirl", "styles/catgirl"]
    card_id = next(c["id"] for c in doc if c["tag_name"] == "styles/catgirl")
    r = g.post("insert", {"id": card_id, "te": 1, "unet": 1, "activation": False, "prompt": "", "negative": None})
    assert r.json()["prompt"] == "<lora:styles/catgirl:1>"
    assert g.library.resolve("styles/catgirl").entry.path == str(gallery_folder / "styles" / "catgirl.safetensors")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [({"te": "x"}, 422, "text-encoder strength"), ({"unet": float("inf")}, 422, "UNet strength must be a finite number"),
     ({"prompt": 5}, 422, "prompt"), ({"id": "0/nope.safetensors"}, 404, "no card")],
)
def test_insert_refuses_bad_values(gallery: Gallery, body: dict[str, Any], status: int, needle: str) -> None:
    base = {"id": gallery.cards()["editable"]["id"], "te": 1, "unet": 1, "prompt": "", "negative": None}
    raw = json.dumps({**base, **body}).replace("Infinity", "1e999")
    r = gallery.client.post(f"{API}/insert", content=raw, headers=POST_HEADERS)
    assert r.status_code == status and needle in r.json()["detail"]


def test_metadata_editor_writes_the_sidecar_keeping_unknown_keys(gallery: Gallery, gallery_folder: Path) -> None:
    card = gallery.cards()["catgirl"]
    r = gallery.post("metadata", {"id": card["id"], "values": {"activation text": "neko", "preferred weight": 0.9,
                                                              "sd version": "SDXL", "favorite": True}})
    assert r.status_code == 200, r.text
    saved = json.loads((gallery_folder / "characters" / "catgirl.json").read_text(encoding="utf-8"))
    assert saved["activation text"] == "neko" and saved["preferred weight"] == 0.9 and saved["modelId"] == 12345
    assert r.json()["card"]["weight"] == 0.9 and r.json()["card"]["family"] == "sdxl"
    assert r.json()["file"] == "characters/catgirl.json"
    assert gallery.cards()["catgirl"]["favorite"] is True
    (gallery_folder / "characters" / "catgirl.json").rename(gallery_folder / "characters" / "Catgirl.JSON")
    r = gallery.post("metadata", {"id": gallery.cards()["catgirl"]["id"], "values": {"notes": "cased"}})
    assert r.status_code == 200 and r.json()["file"] == "characters/Catgirl.JSON"  # the file written, as spelled


def test_metadata_editor_removes_a_flag_set_to_null(gallery: Gallery, gallery_folder: Path) -> None:
    card_id = gallery.cards()["catgirl"]["id"]
    assert gallery.post("metadata", {"id": card_id, "values": {"nsfw": True}}).json()["card"]["nsfw"] is True
    assert gallery.post("metadata", {"id": card_id, "values": {"nsfw": None}}).json()["card"]["nsfw"] is False
    saved = json.loads((gallery_folder / "characters" / "catgirl.json").read_text(encoding="utf-8"))
    assert "nsfw" not in saved and saved["notes"] == "great with sunsets"


def test_thumbnail_url_changes_when_the_preview_is_replaced(gallery: Gallery, gallery_folder: Path) -> None:
    before = gallery.cards()["catgirl"]["thumb"]
    preview = gallery_folder / "characters" / "catgirl.png"
    write_preview(preview, (0, 255, 0))
    os.utime(preview, ns=(preview.stat().st_atime_ns, preview.stat().st_mtime_ns + 10**9))
    gallery.library.refresh()
    after = gallery.cards()["catgirl"]["thumb"]
    assert after != before and gallery.client.get(f"{API}/{after}").status_code == 200


@pytest.mark.parametrize(
    ("values", "needle"),
    [({"preferred weight": "heavy"}, "preferred weight"), ({"sd version": "SD9"}, "sd version"),
     ({"path": "../../x"}, "does not write path"), ([1], "must be an object")],
)
def test_metadata_editor_refuses_bad_values(gallery: Gallery, gallery_folder: Path, values: Any, needle: str) -> None:
    before = (gallery_folder / "characters" / "catgirl.json").read_bytes()
    r = gallery.post("metadata", {"id": gallery.cards()["catgirl"]["id"], "values": values})
    assert r.status_code == 422 and needle in r.json()["detail"]
    assert (gallery_folder / "characters" / "catgirl.json").read_bytes() == before


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Content-Type": "application/json"}, 403),
     ({**POST_HEADERS, "Origin": "http://evil.example"}, 403),
     ({"X-LoraPrompt": "1", "Content-Type": "text/plain"}, 415)],
)
def test_writes_refuse_cross_site_requests(gallery: Gallery, gallery_folder: Path, headers: dict[str, str], status: int) -> None:
    body = {"id": gallery.cards()["editable"]["id"], "values": {"notes": "pwned"}}
    assert gallery.post("metadata", body, headers).status_code == status
    assert gallery.post("refresh", {}, headers).status_code == status
    assert not (gallery_folder / "editable.json").exists()


@pytest.mark.parametrize("ref", ["../editable.safetensors", "0/../../x.safetensors", "0/%2e%2e/x.safetensors",
                                 "0\\..\\x.safetensors", "/tmp/x.safetensors", "0/editable.safetensors\x00.png",
                                 "0/../LoraEvil/x.safetensors", "1/x.safetensors", 5, None])
def test_metadata_writes_refuse_targets_outside_the_roots(gallery: Gallery, gallery_folder: Path, ref: Any) -> None:
    """Robustness rule 22: the write route takes a card id only; anything else is a 404 and no
    sidecar is written anywhere (not beside the roots, not in a sibling folder sharing the prefix)."""
    evil = gallery_folder.parent / "LoraEvil"
    evil.mkdir()
    write_lora(evil / "x.safetensors", SD1_KEYS)
    before = sorted(p for p in gallery_folder.parent.rglob("*") if p.is_file())
    r = gallery.post("metadata", {"id": ref, "values": {"notes": "pwned"}})
    assert r.status_code == 404 and "pwned" not in r.text
    assert sorted(p for p in gallery_folder.parent.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("name", ["page.svg", "page.html", "page.json", "page.safetensors.png.html", "page.preview.svg"])
def test_only_image_previews_are_offered(gallery_folder: Path, tmp_path: Path, name: str) -> None:
    """Robustness rule 19: a file beside the LoRA that is not an image is never its preview."""
    write_lora(gallery_folder / "page.safetensors", SD1_KEYS)
    (gallery_folder / name).write_text("<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>")
    g = Gallery(gallery_folder, tmp_path / "c7")
    card = g.cards()["page"]
    assert card["thumb"] is None
    for route in ("preview", "thumb"):
        r = g.client.get(f"{API}/{route}", params={"id": card["id"]})
        assert r.status_code == 404 and "onload" not in r.text


def test_same_origin_post_is_accepted(gallery: Gallery) -> None:
    headers = {**POST_HEADERS, "Origin": "http://testserver"}
    assert gallery.post("refresh", {}, headers).status_code == 200


def test_bad_bodies_give_4xx(gallery: Gallery) -> None:
    assert gallery.client.post(f"{API}/insert", content=b"\xff{", headers=POST_HEADERS).status_code == 400
    assert gallery.client.post(f"{API}/insert", content=b"[1]", headers=POST_HEADERS).status_code == 400
    assert gallery.client.post(f"{API}/insert", content=b" " * (2 << 20), headers=POST_HEADERS).status_code == 413


def test_refresh_notices_new_and_removed_files(gallery: Gallery, gallery_folder: Path) -> None:
    generation = gallery.client.get(f"{API}/state").json()["generation"]
    write_lora(gallery_folder / "styles" / "fresh.safetensors", SD1_KEYS, seed=9)
    (gallery_folder / "editable.safetensors").unlink()
    names = {c["name"] for c in gallery.post("refresh", {}).json()["cards"]}
    assert "fresh" in names and "editable" not in names
    assert gallery.client.get(f"{API}/state").json()["generation"] > generation


def test_static_route_serves_only_the_gallery_assets(gallery: Gallery) -> None:
    js = gallery.client.get(f"{API}/static/gallery.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for name in ("../routes.py", "..%2Froutes.py", "gallery.js.map", "__init__.py"):
        assert gallery.client.get(f"{API}/static/{name}").status_code == 404


def test_routes_go_before_an_existing_catch_all(gallery_folder: Path, tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/{anything:path}")
    def catch_all(anything: str) -> str:
        return "catch-all"

    mount_gallery_routes(app, GalleryService(Library(gallery_folder, persist=False), None, tmp_path / "t"))
    assert "cards" in TestClient(app).get(f"{API}/cards").json()


def test_sidecar_with_nan_and_infinity_still_opens_its_details(gallery: Gallery, gallery_folder: Path) -> None:
    # Python's json reads NaN/Infinity (other tools write them); the page's JSON cannot carry them
    (gallery_folder / "characters" / "catgirl.json").write_text('{"preferred weight": NaN, "notes": "ok", "activation text": Infinity}')
    gallery.library.refresh()
    card = gallery.cards()["catgirl"]
    assert card["weight"] == 1.0
    r = gallery.client.get(f"{API}/details", params={"id": card["id"]})
    assert r.status_code == 200
    assert r.json()["user"]["notes"] == "ok"


def test_deeply_nested_json_body_is_a_400_not_a_500(gallery: Gallery) -> None:
    r = gallery.client.post(f"{API}/insert", content="[" * 100_000, headers=POST_HEADERS)
    assert r.status_code == 400 and "JSON" in r.json()["detail"]


def test_every_script_part_is_served_and_both_loaders_load_them_in_order() -> None:
    from loraprompt.ui.gallery import loader_js
    from loraprompt.ui.routes import SCRIPTS, STATIC_DIR

    assert sorted(p.name for p in STATIC_DIR.glob("*.js")) == sorted(SCRIPTS) and SCRIPTS[-1] == "gallery.js"
    extension_loader = (Path(__file__).parents[2] / "javascript" / "loraprompt.js").read_text()
    assert json.dumps(list(SCRIPTS)) in extension_loader
    assert json.dumps(list(SCRIPTS)) in loader_js()
