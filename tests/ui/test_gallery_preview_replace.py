"""The editor's "Replace preview" route (A1111's button of that name): a generated image sent by the
page becomes `<stem>.png` beside the LoRA, with its generation parameters, and the card shows it;
bad images, unwritable folders and cross-site posts change nothing."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from loraprompt.infotext import image_infotext

from .test_gallery_routes import API, POST_HEADERS, Gallery

INFOTEXT = "a cat, <lora:catgirl:0.7>\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 7, Size: 64x48"


def data_url(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


def png(color: tuple[int, int, int], infotext: str | None = INFOTEXT, size: tuple[int, int] = (64, 48)) -> bytes:
    meta = PngInfo()
    if infotext is not None:
        meta.add_text("parameters", infotext)
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


def jpeg_with_comment(color: tuple[int, int, int], infotext: str) -> bytes:
    """A JPEG carrying its infotext as A1111 writes it: an EXIF UserComment in UTF-16 ("UNICODE")."""
    image = Image.new("RGB", (64, 48), color)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + infotext.encode("utf_16_be")
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture
def gallery(gallery_folder: Path, tmp_path: Path) -> Gallery:
    return Gallery(gallery_folder, tmp_path / "cache")


def replace(gallery: Gallery, name: str, image: Any) -> Any:
    return gallery.post("preview-image", {"id": gallery.cards()[name]["id"], "image": image})


def test_a_png_result_becomes_the_preview_byte_for_byte(gallery: Gallery, gallery_folder: Path) -> None:
    before = gallery.cards()["watercolor"]
    assert before["thumb"] is not None  # watercolor.preview.jpg, which a `<stem>.png` outranks
    raw = png((0, 200, 0))
    r = replace(gallery, "watercolor", data_url(raw))
    assert r.status_code == 200, r.text
    target = gallery_folder / "styles" / "watercolor.png"
    assert target.read_bytes() == raw  # its `parameters` chunk kept, as A1111's Replace preview keeps it
    assert (gallery_folder / "styles" / "watercolor.preview.jpg").exists()  # the old preview is left alone
    assert r.json()["file"] == "styles/watercolor.png"
    card = r.json()["card"]
    assert card["id"] == before["id"] and card["thumb"] != before["thumb"]
    assert gallery.cards()["watercolor"]["thumb"] == card["thumb"]
    thumb = gallery.client.get(f"{API}/{card['thumb']}")
    assert thumb.status_code == 200
    with Image.open(io.BytesIO(thumb.content)) as t:
        assert t.convert("RGB").getpixel((t.width // 2, t.height // 2)) == pytest.approx((0, 200, 0), abs=8)
    assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_jpeg_result_is_written_as_png_with_its_infotext(gallery: Gallery, gallery_folder: Path) -> None:
    r = replace(gallery, "editable", data_url(jpeg_with_comment((10, 20, 230), INFOTEXT), "jpeg"))
    assert r.status_code == 200, r.text
    with Image.open(gallery_folder / "editable.png") as written:
        assert written.format == "PNG" and written.size == (64, 48)
        assert image_infotext(written)[0] == INFOTEXT


def test_an_existing_png_preview_is_replaced(gallery: Gallery, gallery_folder: Path) -> None:
    raw = png((1, 2, 3), infotext=None)
    assert replace(gallery, "catgirl", data_url(raw)).status_code == 200
    assert (gallery_folder / "characters" / "catgirl.png").read_bytes() == raw


def test_a_symlinked_preview_is_replaced_not_written_through(gallery: Gallery, gallery_folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "shared-previews" / "cat.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(png((9, 9, 9)))
    kept = elsewhere.read_bytes()
    link = gallery_folder / "characters" / "catgirl.png"
    link.unlink()
    link.symlink_to(elsewhere)
    gallery.library.refresh()
    raw = png((200, 0, 0))
    assert replace(gallery, "catgirl", data_url(raw)).status_code == 200
    assert not link.is_symlink() and link.read_bytes() == raw and elsewhere.read_bytes() == kept


@pytest.mark.parametrize(
    ("image", "needle"),
    [("", "data URL"), (None, "data URL"), ("data:text/html,<b>x</b>", "base64 data URL"),
     ("data:image/png;base64,@@@", "not valid base64"), (data_url(b"not an image at all"), "not an image"),
     (data_url(png((1, 1, 1))[:60]), "not an image")],
)
def test_bad_images_are_refused_and_nothing_is_written(gallery: Gallery, gallery_folder: Path, image: Any, needle: str) -> None:
    before = (gallery_folder / "characters" / "catgirl.png").read_bytes()
    r = replace(gallery, "catgirl", image)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert (gallery_folder / "characters" / "catgirl.png").read_bytes() == before
    assert not (gallery_folder / "editable.png").exists()
    assert not [p for p in gallery_folder.rglob("*.tmp")]


def test_an_unknown_card_is_a_404(gallery: Gallery) -> None:
    r = gallery.post("preview-image", {"id": "nope", "image": data_url(png((0, 0, 0)))})
    assert r.status_code == 404


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_names_the_file_and_keeps_the_old_preview(gallery: Gallery, gallery_folder: Path) -> None:
    folder = gallery_folder / "characters"
    before = (folder / "catgirl.png").read_bytes()
    folder.chmod(0o555)
    try:
        r = replace(gallery, "catgirl", data_url(png((0, 0, 255))))
    finally:
        folder.chmod(0o755)
    assert r.status_code == 422 and str(folder / "catgirl.png") in r.json()["detail"]
    assert (folder / "catgirl.png").read_bytes() == before


def test_a_failed_rename_leaves_no_temporary_file(gallery: Gallery, gallery_folder: Path) -> None:
    """The preview's name taken by a folder: the rename fails, the error names the file, and the
    temporary file written beside it is removed (works as root too, unlike a read-only folder)."""
    (gallery_folder / "editable.png").mkdir()
    (gallery_folder / "editable.png" / "keep.txt").write_text("x")
    r = replace(gallery, "editable", data_url(png((0, 0, 255))))
    assert r.status_code == 422 and "editable.png" in r.json()["detail"], r.text
    assert (gallery_folder / "editable.png" / "keep.txt").read_text() == "x"
    assert not [p for p in gallery_folder.iterdir() if p.name.endswith(".tmp")]


def test_cross_site_and_oversized_posts_are_refused(gallery: Gallery, gallery_folder: Path) -> None:
    card = gallery.cards()["editable"]
    body = {"id": card["id"], "image": data_url(png((0, 0, 0)))}
    assert gallery.post("preview-image", body, {"Content-Type": "application/json"}).status_code == 403
    assert gallery.post("preview-image", body, {**POST_HEADERS, "Origin": "http://evil.example"}).status_code == 403
    from loraprompt.ui.routes import MAX_IMAGE_BODY

    huge = gallery.client.post(f"{API}/preview-image", content=json.dumps({**body, "image": "A" * (MAX_IMAGE_BODY + 1)}),
                               headers=POST_HEADERS)
    assert huge.status_code == 413
    assert not (gallery_folder / "editable.png").exists()
