"""The gallery's thumbnails of a file replaced by one of the same size with its mtime kept (`rsync -a`
renames a new file over it, `cp -p` rewrites it in place and sets the old mtime back): a new URL and
a new thumbnail, never the old file's (robustness rule 12). Real files, a real FastAPI app."""

from __future__ import annotations

import base64
import json
import os
import time
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures.replace import MODES, replace_keeping_stat

from .conftest import SD1_KEYS, write_lora
from .test_gallery_routes import API, Gallery

GREEN, BLUE = (9, 200, 9), (9, 9, 200)


def _png(color: tuple[int, int, int]) -> bytes:
    out = BytesIO()
    Image.new("RGB", (300, 200), color).save(out, "PNG")
    return out.getvalue()


def _color(content: bytes) -> tuple[int, ...]:
    with Image.open(BytesIO(content)) as im:
        return tuple(im.convert("RGB").getpixel((10, 10)))


def _near(got: tuple[int, ...], want: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 20 for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_embedded_cover_of_a_replaced_lora_is_fresh(tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "Lora"
    lora, other = folder / "covered.safetensors", tmp_path / "src" / "other.safetensors"
    pads = {lora: "", other: ""}
    for _ in range(200):  # two files of the same size with other covers and tensors: pad the smaller's metadata
        for path, color, seed in ((lora, GREEN, 0), (other, BLUE, 1)):
            cover = json.dumps([base64.b64encode(_png(color)).decode()])
            write_lora(path, SD1_KEYS, {"ssmd_cover_images": cover, "pad": pads[path]}, seed=seed)
        if lora.stat().st_size == other.stat().st_size:
            break
        pads[min(pads, key=lambda p: p.stat().st_size)] += "x"
    assert lora.stat().st_size == other.stat().st_size and lora.read_bytes() != other.read_bytes()
    past = time.time_ns() - 3600 * 10**9
    os.utime(lora, ns=(past, past))
    g = Gallery(folder, tmp_path / "cache", auto_check_s=3600)
    old_url = g.cards()["covered"]["thumb"]
    assert _near(_color(g.client.get(f"{API}/{old_url}").content), GREEN)
    replace_keeping_stat(lora, other.read_bytes(), mode)
    g.library.refresh()
    url = g.cards()["covered"]["thumb"]
    assert url != old_url  # browsers refetch it
    r = g.client.get(f"{API}/{url}")
    assert r.status_code == 200 and _near(_color(r.content), BLUE)


@pytest.mark.parametrize("mode", MODES)
def test_thumbnail_of_a_replaced_preview_is_fresh(tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "Lora"
    write_lora(folder / "style.safetensors", SD1_KEYS)
    preview = folder / "style.png"
    green, blue = _png(GREEN), _png(BLUE)
    assert len(green) == len(blue)
    preview.write_bytes(green)
    past = time.time_ns() - 3600 * 10**9
    os.utime(preview, ns=(past, past))
    g = Gallery(folder, tmp_path / "cache", auto_check_s=3600)
    old_url = g.cards()["style"]["thumb"]
    assert _near(_color(g.client.get(f"{API}/{old_url}").content), GREEN)
    replace_keeping_stat(preview, blue, mode)
    g.library.refresh()
    url = g.cards()["style"]["thumb"]
    assert url != old_url
    r = g.client.get(f"{API}/{url}")
    assert r.status_code == 200 and _near(_color(r.content), BLUE)


@pytest.mark.parametrize("mode", MODES)
def test_the_details_preview_of_a_replaced_preview_is_fresh(tmp_path: Path, mode: str) -> None:
    """The details view's full-size preview URL was versioned by the model file's mtime, and the
    route lets browsers keep it a day: a preview replaced (Civitai Helper fetching a new one, a
    user's own image) kept showing the old image there. It is versioned by the image file now."""
    folder = tmp_path / "Lora"
    write_lora(folder / "style.safetensors", SD1_KEYS)
    preview = folder / "style.png"
    green, blue = _png(GREEN), _png(BLUE)
    preview.write_bytes(green)
    past = time.time_ns() - 3600 * 10**9
    os.utime(preview, ns=(past, past))
    g = Gallery(folder, tmp_path / "cache", auto_check_s=3600)
    card_id = g.cards()["style"]["id"]
    old_url = g.client.get(f"{API}/details", params={"id": card_id}).json()["preview"]
    assert _near(_color(g.client.get(f"{API}/{old_url}").content), GREEN)
    replace_keeping_stat(preview, blue, mode)
    g.library.refresh()
    url = g.client.get(f"{API}/details", params={"id": card_id}).json()["preview"]
    assert url != old_url
    r = g.client.get(f"{API}/{url}")
    assert r.status_code == 200 and "max-age" in r.headers["cache-control"] and _near(_color(r.content), BLUE)
