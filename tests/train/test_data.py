"""Training images as the user sees them: EXIF rotation applied, 16-bit and transparent PNGs
brought to 8-bit RGB the way an image viewer shows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from loraprompt.train.data import load_dataset


def _load(folder: Path) -> dict[str, np.ndarray]:
    data = load_dataset(folder, resolution=64, step=16, template="{token}", token="<s1>", require_token=False)
    assert data.skipped == []
    return {item.name: np.asarray(item.image) for item in data.images}


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # stored 64 wide x 32 tall, red left / blue right; orientation 6 shows it rotated 90° clockwise:
    # 32 wide x 64 tall, red on top
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    data = load_dataset(tmp_path, resolution=64, step=16, template="{token}", token="<s1>", require_token=False)
    item = data.images[0]
    assert item.original_size == (64, 32)  # (height, width) as shown
    assert item.size[0] > item.size[1]  # a portrait bucket
    array = np.asarray(item.image)
    assert array[2, array.shape[1] // 2, 0] > 200 and array[-3, array.shape[1] // 2, 2] > 200


def test_sixteen_bit_grayscale_keeps_its_tones(tmp_path: Path) -> None:
    ramp = np.zeros((32, 32), np.uint16)
    ramp[:, :16] = 16384  # a quarter of 16-bit white
    ramp[:, 16:] = 49152
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    array = _load(tmp_path)["scan.png"]
    assert abs(int(array[10, 5, 0]) - 64) <= 2 and abs(int(array[10, -5, 0]) - 191) <= 2


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)  # transparent black around an opaque green square
    rgba[8:24, 8:24] = (0, 255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(rgba, "RGBA").convert("P").save(tmp_path / "palette.png", transparency=0)
    for name, array in _load(tmp_path).items():
        assert tuple(array[1, 1]) == (255, 255, 255), name
        assert tuple(array[32, 32]) == (0, 255, 0), name


def test_a_caption_file_saved_with_a_bom_reads_as_written(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("\ufeffa photo of {token}, café".encode())  # Windows Notepad's UTF-8
    data = load_dataset(tmp_path, resolution=64, step=16, template="{token}", token="<s1>", require_token=False)
    assert data.images[0].caption == "a photo of <s1>, café"
    assert data.tag_frequency() == {"a photo of <s1>": 1, "café": 1}


def test_caption_files_saved_as_utf16_or_in_a_windows_code_page_read_as_written(tmp_path: Path) -> None:
    # Notepad's "Unicode" is UTF-16 LE with a BOM; older Windows tools write cp1252 (é is one byte)
    written = {"le": ("utf-16", "a photo of {token}, café"), "be": ("utf-16-be", "\ufeffa photo of {token}, 猫"),
               "cp": ("cp1252", "a photo of {token}, café – naïve")}
    for stem, (encoding, text) in written.items():
        Image.new("RGB", (32, 32), "red").save(tmp_path / f"{stem}.png")
        (tmp_path / f"{stem}.txt").write_bytes(text.encode(encoding))
    data = load_dataset(tmp_path, resolution=64, step=16, template="{token}", token="<s1>", require_token=False)
    captions = {item.name: item.caption for item in data.images}
    assert captions == {"le.png": "a photo of <s1>, café", "be.png": "a photo of <s1>, 猫",
                        "cp.png": "a photo of <s1>, café – naïve"}


def test_gif_tiff_and_jfif_images_train_and_phone_heic_files_are_named_not_dropped(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(tmp_path / "loop.gif", save_all=True, append_images=frames[1:])  # its first frame trains
    frames[0].save(tmp_path / "scan.tif")
    frames[0].save(tmp_path / "web.jfif", format="JPEG")
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # an iPhone photo PIL cannot read
    data = load_dataset(tmp_path, resolution=64, step=16, template="{token}", token="<s1>", require_token=False)
    assert sorted(item.name for item in data.images) == ["loop.gif", "scan.tif", "web.jfif"]
    assert [name for name, _ in data.skipped] == ["IMG_0001.HEIC"]
    assert "PNG or JPEG" in data.skipped[0][1]


def test_an_empty_caption_file_falls_back_to_the_template(tmp_path: Path) -> None:
    # a captioning tool that was stopped leaves empty sidecars: the image must not train on an empty prompt
    for stem, text in (("empty", b""), ("blank", b"\xef\xbb\xbf \r\n\t\n")):
        Image.new("RGB", (32, 32), "red").save(tmp_path / f"{stem}.png")
        (tmp_path / f"{stem}.txt").write_bytes(text)
    data = load_dataset(tmp_path, resolution=64, step=16, template="a photo of {token}", token="<s1>",
                        require_token=False)
    assert [item.caption for item in data.images] == ["a photo of <s1>", "a photo of <s1>"]
    assert data.tag_frequency() == {"a photo of <s1>": 2}


def test_nas_thumbnails_and_recycle_bins_are_not_training_images(tmp_path: Path) -> None:
    # a Synology share keeps thumbnails of every photo in @eaDir/<photo>/ and deleted files in #recycle
    Image.new("RGB", (32, 32), "red").save(tmp_path / "cat.jpg")
    for extra in ("@eaDir/cat.jpg/SYNOPHOTO_THUMB_M.jpg", "#recycle/old.jpg", "__MACOSX/cat.jpg"):
        (tmp_path / extra).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), "blue").save(tmp_path / extra)
    data = load_dataset(tmp_path, resolution=64, step=16, template="{token}", token="<s1>", require_token=False)
    assert [item.name for item in data.images] == ["cat.jpg"]


def test_kohya_repeat_folders_weight_their_images_and_name_their_subsets(tmp_path: Path) -> None:
    """kohya's dataset layout: `<repeats>_<name>/` folders, each image seen `repeats` times an epoch
    (e.g. 20_face beside 5_body balances a few close-ups against many full shots). They were read
    as plain subfolders: every image once, and one subset in the metadata."""
    from loraprompt.train.loss import _Order

    root = tmp_path / "img"
    for folder, count in (("3_face", 1), ("1_body", 2), ("extra", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(root / folder / f"{folder}{i}.png")
    Image.new("RGB", (32, 32), "white").save(root / "loose.png")
    (root / "0_off").mkdir()
    Image.new("RGB", (32, 32), "black").save(root / "0_off" / "never.png")
    (root / "3_face" / "old").mkdir()  # sd-scripts does not look inside a kohya folder's subfolders
    Image.new("RGB", (32, 32), "red").save(root / "3_face" / "old" / "rejected.png")

    data = load_dataset(root, resolution=32, step=8, template="{token}", token="sks", require_token=False)
    repeats = {item.name: item.repeats for item in data.images}
    assert repeats == {"3_face/3_face0.png": 3, "1_body/1_body0.png": 1, "1_body/1_body1.png": 1,
                       "extra/extra0.png": 1, "loose.png": 1}
    assert ("0_off/never.png", "in a 0_ folder: 0 repeats, as kohya skips it") in data.skipped
    assert ("3_face/old/rejected.png", "in a subfolder of 3_face/: kohya trains only on the images directly in it") \
        in data.skipped  # it was trained on 3 times an epoch, with the folder's caption
    # the subsets kohya's metadata names: its folders, and the rest under the root's own name
    assert data.subsets("img") == {"3_face": (3, 1), "1_body": (1, 2), "img": (1, 2)}
    # images without a caption file are captioned with their folder's name, as sd-scripts does
    assert data.subset_tags("img") == {"3_face": {"face": 1}, "1_body": {"body": 2}, "img": {"sks": 2}}

    order = _Order([item.size for item in data.images], 1, seed=0, repeats=[item.repeats for item in data.images])
    assert order.per_epoch == 7  # 3 + 1 + 1 + 1 + 1 images an epoch
    seen = [order.batch(step)[0] for step in range(order.per_epoch)]
    face = next(i for i, item in enumerate(data.images) if item.name.startswith("3_face"))
    assert seen.count(face) == 3 and all(seen.count(i) == 1 for i in range(len(data.images)) if i != face)


def test_images_in_a_kohya_folder_without_a_caption_file_are_captioned_with_the_folder_name(tmp_path: Path) -> None:
    """sd-scripts captions an image of `10_sks dog/` without a caption file "sks dog" (everything
    after the first underscore); such a dataset was trained on loraprompt's template instead, so the
    words the user put in the folder names were never learned."""
    root = tmp_path / "img"
    files = {"10_sks dog/a.png": None, "10_sks dog/b.png": "a dog on grass", "10_sks dog/c.png": "",
             "2_my_cat/d.png": None, "3_{token} style/e.png": None, "extra/f.png": None, "loose.png": None}
    for name, caption in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), "blue").save(root / name)
        if caption is not None:
            (root / name).with_suffix(".txt").write_text(caption)

    def captions(require_token: bool) -> dict[str, str]:
        data = load_dataset(root, resolution=32, step=8, template="a photo of {token}", token="<s1>",
                            require_token=require_token)
        return {item.name: item.caption for item in data.images}

    assert captions(require_token=False) == {
        "10_sks dog/a.png": "sks dog",
        "10_sks dog/b.png": "a dog on grass",  # a caption file still wins
        "10_sks dog/c.png": "sks dog",  # an empty one falls back as it does to the template
        "2_my_cat/d.png": "my_cat",  # only the repeats are split off: kohya keeps later underscores
        "3_{token} style/e.png": "<s1> style",  # {token} is replaced as in caption files and the template
        "extra/f.png": "a photo of <s1>", "loose.png": "a photo of <s1>",  # not kohya folders: the template
    }
    pivotal = captions(require_token=True)  # a pivotal token must appear: put in front, as for caption files
    assert pivotal["10_sks dog/a.png"] == "<s1>, sks dog" and pivotal["3_{token} style/e.png"] == "<s1> style"


def test_images_much_smaller_than_their_bucket_are_named_as_training_blurry(tmp_path: Path) -> None:
    """A 24x24 thumbnail in a 64-pixel run was enlarged 2.7x without a word, and the LoRA learned its
    blur; kohya upscales silently too. It is still used, and named with the factor."""
    Image.new("RGB", (24, 24), "red").save(tmp_path / "thumb.png")
    Image.new("RGB", (64, 48), "blue").save(tmp_path / "fine.png")
    data = load_dataset(tmp_path, resolution=64, step=8, template="{token}", token="sks", require_token=False)
    assert sorted(item.name for item in data.images) == ["fine.png", "thumb.png"]
    assert [name for name, _ in data.upscaled] == ["thumb.png"]
    assert "24x24 is upscaled 2.7x to 64x64" in data.upscaled[0][1]
