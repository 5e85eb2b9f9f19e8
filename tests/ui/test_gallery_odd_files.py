"""The gallery's routes over files other tools leave behind: a preview whose bytes are another
image format than its extension says, names that are not UTF-8 or hold `%XX`, sidecars with
nulls or out-of-range numbers, a file overwritten since the scan, a read-only folder."""

from __future__ import annotations

import json
import os
import re
from io import BytesIO
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from loraprompt.library import Library
from loraprompt.ui.gallery_service import GalleryService
from loraprompt.ui.routes import mount_gallery_routes

from .conftest import SD1_KEYS, write_lora

API = "/loraprompt/gallery"
POST_HEADERS = {"X-LoraPrompt": "1", "Content-Type": "application/json"}


def client(roots: list[Path], tmp_path: Path) -> tuple[TestClient, Library]:
    library = Library(roots, tmp_path / "cache", persist=False, settle_s=0.0, auto_check_s=3600)  # no rescan mid-test
    app = FastAPI()
    mount_gallery_routes(app, GalleryService(library, thumb_dir=tmp_path / "thumbs"))
    return TestClient(app, raise_server_exceptions=False), library


def cards(c: TestClient) -> dict[str, dict[str, Any]]:
    r = c.get(f"{API}/cards")
    assert r.status_code == 200, r.text
    return {card["name"]: card for card in r.json()["cards"]}


def test_civitai_helpers_jpeg_saved_as_png_is_shown(tmp_path: Path) -> None:
    """Civitai Helper downloads Civitai's JPEG to `<stem>.preview.png`: preview and thumbnail are
    served, the preview as image/jpeg (what its bytes are) with nosniff."""
    root = tmp_path / "Lora"
    write_lora(root / "cute.safetensors", SD1_KEYS)
    Image.new("RGB", (320, 480), (200, 100, 50)).save(root / "cute.preview.png", "JPEG")
    c, _ = client([root], tmp_path)
    card = cards(c)["cute"]
    r = c.get(f"{API}/preview", params={"id": card["id"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff" and r.content[:3] == b"\xff\xd8\xff"
    assert card["thumb"] is not None
    r = c.get(f"{API}/{card['thumb']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    with Image.open(BytesIO(r.content)) as im:
        assert im.format == "WEBP" and max(im.size) == 256
    details = c.get(f"{API}/details", params={"id": card["id"]}).json()
    assert details["preview"] is not None and details["preview"].startswith("preview?")


def test_the_preview_route_reads_the_images_first_bytes_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Serving a preview needs its check (image bytes behind an image extension) and its type (what
    the bytes say); both come from one read of the file's head (it was read twice per request)."""
    from loraprompt.library import paths

    root = tmp_path / "Lora"
    write_lora(root / "cute.safetensors", SD1_KEYS)
    Image.new("RGB", (32, 32), (200, 100, 50)).save(root / "cute.preview.png", "JPEG")
    c, _ = client([root], tmp_path)
    card = cards(c)["cute"]
    reads: list[bytes] = []
    real = paths.image_kind
    monkeypatch.setattr(paths, "image_kind", lambda data: reads.append(data) or real(data))
    r = c.get(f"{API}/preview", params={"id": card["id"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert len(reads) == 1


def test_a_percent_escape_kept_in_a_file_name_does_not_hide_its_preview(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    write_lora(root / "add%20detail.safetensors", SD1_KEYS)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "add%20detail.png")
    c, _ = client([root], tmp_path)
    card = cards(c)["add%20detail"]
    r = c.get(f"{API}/preview", params={"id": card["id"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert c.get(f"{API}/{card['thumb']}").status_code == 200
    assert c.get(f"{API}/preview", params={"id": "0/add detail.safetensors"}).status_code == 404


def test_details_of_a_user_json_with_1e999_are_served(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    write_lora(root / "a.safetensors", SD1_KEYS)
    (root / "a.json").write_text('{"preferred weight": 1e999, "notes": "x"}')
    c, _ = client([root], tmp_path)
    card = cards(c)["a"]
    r = c.get(f"{API}/details", params={"id": card["id"]})
    assert r.status_code == 200 and r.json()["user"]["notes"] == "x"


def test_saving_metadata_where_the_write_fails_is_a_4xx_naming_the_file(tmp_path: Path) -> None:
    """The system refusing the write (a read-only share; here the folder replaced by a file since
    the scan, which fails even for root) is a 422 naming `<stem>.json` and why, not a 500."""
    root = tmp_path / "Lora"
    write_lora(root / "sub" / "a.safetensors", SD1_KEYS)
    c, _ = client([root], tmp_path)
    card_id = cards(c)["a"]["id"]
    (root / "sub").rename(root / "moved")
    (root / "sub").write_text("not a folder")
    r = c.post(f"{API}/metadata", content=json.dumps({"id": card_id, "values": {"notes": "hi"}}), headers=POST_HEADERS)
    assert r.status_code == 422 and "a.json: cannot write the metadata (Not a directory)" in r.json()["detail"]


def test_a_file_name_that_is_not_utf8_keeps_the_gallery_working(tmp_path: Path) -> None:
    """`caf\\xe9.safetensors` (Latin-1 bytes; os.fsdecode gives a lone surrogate): the cards are
    valid UTF-8 JSON, the card's id goes through URLs, its preview and details are served, and a
    click inserts a stand-in name with `hash=` that resolves to that very file."""
    root = tmp_path / "Lora"
    odd = Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9.safetensors"))
    write_lora(odd, SD1_KEYS, seed=1)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(odd.with_suffix(".png"))
    write_lora(root / "caf_.safetensors", SD1_KEYS, seed=2)  # the stand-in's name is taken: _by_hash
    write_lora(root / "ok.safetensors", SD1_KEYS, seed=3)
    c, library = client([root], tmp_path)
    r = c.get(f"{API}/cards")
    assert r.status_code == 200
    r.content.decode("utf-8")  # strict: no surrogate leaked into the body
    by_name = {card["name"]: card for card in r.json()["cards"]}
    assert set(by_name) == {"caf\udce9", "caf_", "ok"}
    card = by_name["caf\udce9"]
    card["id"].encode("utf-8")
    for route in ("details", "preview"):
        assert c.get(f"{API}/{route}", params={"id": card["id"]}).status_code == 200, route
    assert c.get(f"{API}/{card['thumb']}").status_code == 200
    body = {"id": card["id"], "te": 1, "unet": 1, "prompt": "a cat"}
    r = c.post(f"{API}/insert", content=json.dumps(body), headers=POST_HEADERS)
    assert r.status_code == 200, r.text
    tag = r.json()["tag"]
    match = re.fullmatch(r"<lora:(caf__by_hash):1:hash=([0-9a-f]{12})>", tag)
    assert match is not None, tag
    found = library.resolve(match[1], hash=match[2])
    assert found.entry is not None and found.entry.path == str(odd) and not found.diagnostics
    assert "byte 0xe9 (not UTF-8)" in r.json()["message"]
    r = c.post(f"{API}/metadata", content=json.dumps({"id": card["id"], "values": {"notes": "hi"}}), headers=POST_HEADERS)
    assert r.status_code == 200 and r.json()["card"]["id"] == card["id"]
    assert json.loads(Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9.json")).read_text()) == {"notes": "hi"}


def test_the_card_id_of_a_name_that_is_not_utf8_does_not_depend_on_other_files(tmp_path: Path) -> None:
    """A Latin-1 `caf\\xe9` and a UTF-8 file literally named with its escaped form (`caf\ufffde9`)
    each keep their own id, and the odd file's id is the same before and after more such files
    appear (it got `~` appended in scan order, so a new file could move another card's id and its
    bookmarked or cached URL then answered 404)."""
    root = tmp_path / "Lora"
    odd = Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9.safetensors"))
    write_lora(odd, SD1_KEYS, seed=1)
    c, library = client([root], tmp_path)
    before = cards(c)["caf\udce9"]["id"]
    write_lora(root / "caf\ufffde9.safetensors", SD1_KEYS, seed=2)
    write_lora(Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9\xef\xbf\xbde9.safetensors")), SD1_KEYS, seed=3)
    write_lora(Path(os.fsdecode(os.fsencode(root) + b"/ca\xe9.safetensors")), SD1_KEYS, seed=4)
    library.refresh()
    after = cards(c)
    assert len(after) == 4 and after["caf\udce9"]["id"] == before
    assert len({card["id"] for card in after.values()}) == 4
    for card in after.values():
        assert c.get(f"{API}/details", params={"id": card["id"]}).status_code == 200, card["name"]


def test_details_of_a_file_half_overwritten_since_the_scan_show_a_problem_row(tmp_path: Path) -> None:
    root = tmp_path / "Lora"
    path = write_lora(root / "a.safetensors", SD1_KEYS)
    c, _ = client([root], tmp_path)
    card_id = cards(c)["a"]["id"]
    data = path.read_bytes()
    with open(path, "r+b") as f:  # a new version being copied over it: only its first bytes yet
        f.truncate(0)
        f.write(data[:200])
    r = c.get(f"{API}/details", params={"id": card_id})
    assert r.status_code == 200, r.text
    html = r.json()["html"]
    assert "<th>Problem</th>" in html and "changed since the scan" in html and "larger than the file" in html


def test_the_page_says_which_links_are_unreachable_and_what_is_no_file(tmp_path: Path) -> None:
    """A symlinked drive that is unplugged keeps its cards (offline) and a FIFO named like a model
    is left out (tests/library/test_library_walk.py): the page's notice names both, as it names an
    unreachable root, so the user knows why cards are greyed out or missing."""
    root, media = tmp_path / "Lora", tmp_path / "media"
    write_lora(root / "here.safetensors", SD1_KEYS)
    write_lora(media / "far.safetensors", SD1_KEYS)
    (root / "usb").symlink_to(media)
    os.mkfifo(root / "pipe.safetensors")
    c, library = client([root], tmp_path)
    assert set(cards(c)) == {"here", "far"}
    media.rename(tmp_path / "unplugged")
    library.refresh()
    doc = c.get(f"{API}/cards").json()
    assert {card["name"] for card in doc["cards"]} == {"here", "far"}
    assert f"not reachable, cards kept: {root / 'usb'}" in doc["notice"]
    assert f"not regular files, left out: {root / 'pipe.safetensors'}" in doc["notice"]


def test_the_page_names_a_folder_that_cannot_be_listed(tmp_path: Path, monkeypatch: Any) -> None:
    """A subfolder the server cannot list (tests/library/test_library_walk.py; an I/O error is
    injected, as permissions do not stop root) keeps its cards, and the notice says why."""
    import errno

    root = tmp_path / "Lora"
    write_lora(root / "here.safetensors", SD1_KEYS)
    write_lora(root / "share" / "far.safetensors", SD1_KEYS)
    c, library = client([root], tmp_path)
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path) == str(root / "share"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    library.refresh()
    doc = c.get(f"{API}/cards").json()
    assert {(card["name"], card["offline"]) for card in doc["cards"]} == {("here", False), ("far", True)}
    assert f"folders that cannot be listed (permissions or a failing drive), cards kept: {root / 'share'}" in doc["notice"]


def test_a_preview_deleted_between_its_check_and_its_sending_is_a_404(tmp_path: Path, monkeypatch: Any) -> None:
    """The route checked the preview, then FileResponse opened it again by path when sending: a
    preview deleted in between (a user tidying the folder while the page loads, a thumbnail pruned)
    was a 500 with a traceback. The file is opened once, at the check, so this is a 404 naming it;
    one replaced after it was opened is served whole, as checked."""
    root = tmp_path / "Lora"
    write_lora(root / "gone.safetensors", SD1_KEYS)
    write_lora(root / "kept.safetensors", SD1_KEYS)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(root / "gone.png")
    Image.new("RGB", (64, 64), (200, 9, 9)).save(root / "kept.png")
    original = (root / "kept.png").read_bytes()
    c, _ = client([root], tmp_path)
    ids = {name: card["id"] for name, card in cards(c).items()}
    checked = GalleryService.preview_file

    def deleted_after_the_check(self: GalleryService, card_id: object) -> tuple[Path, str]:
        found = checked(self, card_id)
        if str(card_id) == ids["gone"]:
            found[0].unlink()
        return found

    monkeypatch.setattr(GalleryService, "preview_file", deleted_after_the_check)
    r = c.get(f"{API}/preview", params={"id": ids["gone"]})
    assert r.status_code == 404 and "gone.png" in r.json()["detail"], r.text
    r = c.get(f"{API}/preview", params={"id": ids["kept"]})
    assert r.status_code == 200 and r.content == original and r.headers["content-length"] == str(len(original))
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"
