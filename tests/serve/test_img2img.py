"""A1111's `POST /sdapi/v1/img2img` against a started server: `webuiapi`'s img2img (init images
sent as data URLs), the image the engine makes for the same request, A1111's batch rule for several
init images, and bad images answered 422 naming the field with the weights left as they were."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from typing import Any

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from loraprompt.infotext import parse_infotext
from loraprompt.ui.txt2img import Txt2ImgRequest
from tests.serve.conftest import SMALL, Served


def picture(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (8, 8, 40, 24))
    return image


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode("ascii")


def pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def post(served: Served, **body: Any) -> requests.Response:
    return requests.post(f"{served.url}/sdapi/v1/img2img", json={"prompt": "a cat", "seed": 3, **SMALL, **body},
                         timeout=300)


def test_webuiapi_img2img_gives_the_engines_image_for_the_init_image(served: Served) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=served.port, sampler="Euler", steps=3)
    init = picture((200, 30, 30))
    result = api.img2img(images=[init], prompt="a cat <lora:demo_warm:0.8>", seed=11, width=64, height=64,
                         denoising_strength=0.5, cfg_scale=5)

    fields = parse_infotext(result.info["infotexts"][0])
    assert fields["Denoising strength"] == "0.5" and "demo_warm" in fields["Lora hashes"]
    assert result.info["denoising_strength"] == 0.5 and result.info["all_seeds"] == [11]
    assert result.parameters["init_images"] is None  # not echoed back (include_init_images=False)
    assert result.images[0].info["parameters"] == result.info["infotexts"][0]
    alone = served.engine.generate(Txt2ImgRequest("a cat <lora:demo_warm:0.8>", "", 3, 5, 11, 64, 64, "Euler",
                                                  init_image=init, denoising_strength=0.5), save=False)
    assert np.array_equal(np.asarray(result.images[0].convert("RGB")), np.asarray(alone.image.convert("RGB")))


def test_the_init_image_decides_the_result_with_or_without_a_data_url_prefix(served: Served) -> None:
    red, blue = picture((200, 30, 30)), picture((30, 30, 200))
    plain = post(served, init_images=[b64(red)], denoising_strength=0.4)
    prefixed = post(served, init_images=["data:image/png;base64," + b64(red)], denoising_strength=0.4)
    other = post(served, init_images=["data:image/jpeg;base64," + b64(blue, "JPEG")], denoising_strength=0.4)

    assert plain.status_code == prefixed.status_code == other.status_code == 200
    first = pixels(plain.json()["images"][0])
    assert np.array_equal(first, pixels(prefixed.json()["images"][0]))
    assert not np.array_equal(first, pixels(other.json()["images"][0]))
    assert first[..., 0].mean() > first[..., 2].mean()  # at 0.4 the red init image still shows


def test_init_images_are_read_upright_and_their_transparency_on_white_as_a1111_reads_them(served: Served) -> None:
    """A1111 turns a phone photo upright by its EXIF orientation and flattens transparency onto its
    img2img_background_color (white); both were ignored: a rotated photo ran sideways and a
    transparent PNG ran on black (or on whatever colour its transparent pixels hid)."""
    from loraprompt.ui.img2img import open_image

    red = picture((200, 30, 30), (64, 32))
    upright = np.asarray(red)
    hidden = Image.new("RGBA", (64, 32), (0, 0, 0, 0))  # transparent pixels that hide black...
    hidden.paste(red.convert("RGBA").crop((0, 0, 32, 32)), (0, 0))  # ...beside an opaque half
    palette = hidden.convert("P")
    palette.info["transparency"] = palette.getpixel((63, 0))
    stored = io.BytesIO()  # a camera's JPEG: the pixels sideways, EXIF Orientation 6 (rotate 90° CW to view)
    exif = Image.Exif()
    exif[0x0112] = 6
    red.transpose(Image.Transpose.ROTATE_90).save(stored, format="JPEG", quality=100, exif=exif)
    stored.seek(0)
    photo = Image.open(stored)

    assert open_image(photo).size == (64, 32)  # was 32x64
    assert np.abs(np.asarray(open_image(photo), dtype=int) - upright).max() < 40  # JPEG noise only
    for image in (hidden, palette):
        flat = np.asarray(open_image(image))
        assert (flat[:, 32:] == 255).all(), image.mode  # was black
        assert (flat[:, :32] == upright[:, :32]).all(), image.mode
    # the API reads init images the same way: a transparent PNG runs as its white-flattened copy
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    white.paste(red.crop((0, 0, 32, 32)), (0, 0))
    see_through = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    see_through.paste(red.convert("RGBA").crop((0, 0, 32, 32)), (0, 0))
    ran = [post(served, init_images=[b64(i)], denoising_strength=0.3) for i in (see_through, white)]
    assert [r.status_code for r in ran] == [200, 200]
    assert np.array_equal(pixels(ran[0].json()["images"][0]), pixels(ran[1].json()["images"][0]))


def test_several_init_images_make_a_batch_of_that_many_each_from_its_own(served: Served) -> None:
    red, blue = picture((200, 30, 30)), picture((30, 30, 200))
    both = post(served, init_images=[b64(red), b64(blue)], batch_size=4, seed=20, denoising_strength=0.4)
    only_blue = post(served, init_images=[b64(blue)], seed=21, denoising_strength=0.4)

    assert both.status_code == 200 and only_blue.status_code == 200
    info = json.loads(both.json()["info"])
    assert info["all_seeds"] == [20, 21] and both.json()["parameters"]["batch_size"] == 2  # A1111: batch_size = 2
    assert np.array_equal(pixels(both.json()["images"][1]), pixels(only_blue.json()["images"][0]))


def test_a_mask_is_named_in_the_warnings(served: Served) -> None:
    init = b64(picture((200, 30, 30)))
    response = post(served, init_images=[init], mask=init, mask_blur=4, inpainting_fill=1, image_cfg_scale=1.5,
                    send_images=False)

    assert response.status_code == 200
    warnings = json.loads(response.json()["info"])["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("mask=")


def _bomb() -> str:
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG")  # a few kB for 144 megapixels
    return base64.b64encode(out.getvalue()).decode("ascii")


@pytest.mark.parametrize(("body", "loc", "words"), [
    ({"init_images": []}, ["init_images"], "at least one"),
    ({"init_images": ["data:image/png;base64,not base64!"]}, ["init_images", "0"], "not valid base64"),
    ({"init_images": [base64.b64encode(b"plain text, no image").decode()]}, ["init_images", "0"], "cannot be read"),
    ({"init_images": ["http://127.0.0.1:9/x.png"]}, ["init_images", "0"], "URLs are not fetched"),
    ({"init_images": ["BOMB"]}, ["init_images", "0"], "pixels"),
    ({"resize_mode": 7}, ["resize_mode"], "0 to 3"),
    ({"denoising_strength": 0}, ["denoising_strength"], "greater than 0"),
    ({"init_images": ["A", "B", "C"], "batch_size": 2}, ["init_images"], "3 images for a batch_size of 2"),
    ({"steps": 0}, ["steps"], "between 1"),
])
def test_bad_img2img_input_is_422_naming_the_field(served: Served, body: dict[str, Any], loc: list[str],
                                                   words: str) -> None:
    fields = {"init_images": [b64(picture((1, 2, 3)))], "prompt": "a cat <lora:demo_warm:1>", **body}
    fields["init_images"] = [_bomb() if d == "BOMB" else d for d in fields["init_images"]]
    before = {k: v.clone() for k, v in served.weights().items()}
    response = post(served, **fields)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", *loc] and words in detail["msg"]
    after = served.weights()
    assert all(np.array_equal(after[k].numpy(), v.numpy()) for k, v in before.items())


def test_webuiapi_png_info_reads_the_infotext_of_a_generated_image(served: Served) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=served.port, sampler="Euler", steps=3)
    made = api.txt2img(prompt="a cat <lora:demo_warm:0.8>", negative_prompt="blurry", seed=9, width=64, height=64)
    read = api.png_info(made.images[0])

    assert read.info == made.info["infotexts"][0]
    assert read.parameters["Prompt"] == "a cat <lora:demo_warm:0.8>" and read.parameters["Seed"] == "9"
    assert read.parameters["Negative prompt"] == "blurry" and "demo_warm" in read.parameters["Lora hashes"]
    plain = requests.post(f"{served.url}/sdapi/v1/png-info", json={"image": b64(picture((1, 2, 3)))}, timeout=30)
    assert plain.status_code == 200 and plain.json() == {"info": "", "items": {}, "parameters": {}}
    bad = requests.post(f"{served.url}/sdapi/v1/png-info", json={"image": "!!"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "image"]


def test_png_info_parameters_are_pasted_as_a1111_pastes_them(served: Served) -> None:
    """A1111's /sdapi/v1/png-info runs the infotext_pasted callbacks on `parameters`
    (modules/api/api.py:597-598): with its built-in Lora, a tag named otherwise in someone else's
    image gets the local name of its known hash, and Additional Networks fields become tags. Here
    `parameters` was the bare parse. An unknown hash leaves the name, and nothing is hashed for it."""
    from PIL.PngImagePlugin import PngInfo

    library = served.service.library
    entry = next(e for e in library.entries if e.name == "demo_warm")
    past = time.time() - 3600  # a file written seconds ago is not trusted in the cache (racy): an older one is
    os.utime(entry.path, (past, past))
    library.refresh()
    entry = next(e for e in library.entries if e.name == "demo_warm")
    short = library.hashes(entry)["a1111_short"]  # known, as after one generation with it
    text = (f"a cat <lora:theirs:0.8>, <lora:unknown:1>\nSteps: 3, Seed: 1, Lora hashes: \"theirs: {short}, "
            f"unknown: 0123456789ab\", AddNet Module 1: LoRA, AddNet Model 1: warm({short}), AddNet Weight A 1: 0.5")
    meta = PngInfo()
    meta.add_text("parameters", text)
    out = io.BytesIO()
    picture((5, 5, 5)).save(out, "PNG", pnginfo=meta)
    r = requests.post(f"{served.url}/sdapi/v1/png-info", json={"image": base64.b64encode(out.getvalue()).decode()}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["info"] == text
    assert r.json()["parameters"]["Prompt"] == "a cat <lora:demo_warm:0.8>, <lora:unknown:1>\n<lora:demo_warm:0.5>"
    assert r.json()["parameters"]["Seed"] == "1"


def test_mime_wrapped_base64_is_read_as_a1111_reads_it(served: Served) -> None:
    """base64.encodebytes (and `base64 img.png`) wrap lines at 76 characters; A1111 decodes that, and
    b64decode(validate=True) refused it (422). Garbage is still refused."""
    init = b64(picture((30, 160, 40)))
    wrapped = base64.encodebytes(base64.b64decode(init)).decode("ascii")
    assert "\n" in wrapped.strip()
    plain = post(served, init_images=[init], denoising_strength=0.6)
    lines = post(served, init_images=[wrapped], denoising_strength=0.6)
    crlf = post(served, init_images=["data:image/png;base64," + wrapped.replace("\n", "\r\n")], denoising_strength=0.6)
    for response in (plain, lines, crlf):
        assert response.status_code == 200, response.text
    assert np.array_equal(pixels(lines.json()["images"][0]), pixels(plain.json()["images"][0]))
    assert np.array_equal(pixels(crlf.json()["images"][0]), pixels(plain.json()["images"][0]))
    made = plain.json()["images"][0]
    info = requests.post(f"{served.url}/sdapi/v1/png-info", timeout=30,
                         json={"image": base64.encodebytes(base64.b64decode(made)).decode("ascii")})
    assert info.status_code == 200 and info.json()["info"] == json.loads(plain.json()["info"])["infotexts"][0]
    for garbage in ("!!!\n!!!", wrapped[:-10] + "\n*\n"):
        refused = post(served, init_images=[garbage])
        assert refused.status_code == 422 and "not valid base64" in refused.json()["detail"][0]["msg"]


def _with_comment(fmt: str, comment: bytes) -> str:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment  # the Exif IFD's UserComment, where A1111 writes a JPEG's infotext
    out = io.BytesIO()
    picture((9, 9, 200)).save(out, format=fmt, exif=exif.tobytes())
    return base64.b64encode(out.getvalue()).decode("ascii")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize(("code", "encoding"), [(b"UNICODE\0", "utf-16-be"), (b"ASCII\0\0\0", "ascii"),
                                                (b"JIS\0\0\0\0\0", "shift_jis")])
def test_png_info_reads_the_exif_user_comment_of_a_jpeg_or_webp(served: Served, fmt: str, code: bytes,
                                                                encoding: str) -> None:
    """A1111 saves a JPEG's or WebP's infotext as the EXIF UserComment (piexif, "UNICODE\\0" and
    UTF-16-BE) and its read_info_from_image reads it back; png-info read only PNG text chunks and
    answered "" for these."""
    text = "a cat <lora:demo_warm:0.8>\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 64x64"
    response = requests.post(f"{served.url}/sdapi/v1/png-info", json={"image": _with_comment(fmt, code + text.encode(encoding))},
                             timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == text and "exif" not in body["items"]
    assert body["parameters"]["Steps"] == "20" and body["parameters"]["Negative prompt"] == "blurry"


def test_a_user_comment_without_a_known_code_is_read_as_utf8_as_a1111_does(served: Served) -> None:
    """piexif refuses an undefined or unknown character code (ValueError); A1111 then decodes the
    whole value as UTF-8, ignoring errors. No comment at all leaves the infotext empty."""
    def info(image: str) -> str:
        response = requests.post(f"{served.url}/sdapi/v1/png-info", json={"image": image}, timeout=30)
        assert response.status_code == 200, response.text
        return str(response.json()["info"])

    assert info(_with_comment("JPEG", b"Steps: 5, Seed: 2 \xff")) == "Steps: 5, Seed: 2 "
    assert info(_with_comment("JPEG", b"\0" * 8 + b"Steps: 5")) == "\0" * 8 + "Steps: 5"
    assert info(b64(picture((1, 2, 3)), "JPEG")) == ""
