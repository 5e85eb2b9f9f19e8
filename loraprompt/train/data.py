"""Training images: a folder or a `.zip`, captions from `<image>.txt` (kohya), else the name of the
kohya `<repeats>_<caption>/` folder an image is in, else a template; aspect-ratio buckets. Bad images
are skipped and named; a zip is checked before anything is extracted (no `../`, absolute paths or
symlinks; a cap on its total uncompressed size)."""

from __future__ import annotations

import re
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from loraprompt.train.errors import TrainError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
# images PIL does not read (phones' HEIC, raw, layered files): named as skipped rather than dropped unseen
OTHER_IMAGE_SUFFIXES = frozenset({".heic", ".heif", ".jxl", ".psd", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf",
                                  ".orf", ".rw2", ".svg"})
# thumbnails and deleted files that file systems keep beside photos: Synology (@eaDir, #recycle), macOS zips
NOT_IMAGE_FOLDERS = frozenset({"@eaDir", "#recycle", "#snapshot", "__MACOSX", "$RECYCLE.BIN"})
MAX_ZIP_BYTES = 2 * 1024**3  # total uncompressed size of a zip's images and captions
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # PIL's decompression-bomb guard, raised to 64 MP
MAX_UPSCALE = 2.0  # an image enlarged more than this to its bucket is named (kohya upscales without a word)
KOHYA_FOLDER = re.compile(r"(\d+)_(.+)")  # sd-scripts' `<repeats>_<name>` image folders


@dataclass
class TrainImage:
    """One usable image with its caption and the bucket it was fitted to."""

    name: str  # file name relative to the image folder (what errors and tag counts name)
    image: Any  # PIL RGB image, cropped and resized to `size`
    caption: str
    original_size: tuple[int, int]  # (height, width) before fitting: SDXL's size time id
    crop_top_left: tuple[int, int]  # (top, left) of the crop, in the resized image: SDXL's crop time id
    size: tuple[int, int]  # (height, width) of the bucket
    repeats: int = 1  # times an epoch: N of a kohya `N_name/` folder it is in
    subset: str = ""  # that folder's name; "" for the rest (metadata names it after the whole folder)


@dataclass
class Dataset:
    images: list[TrainImage]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    upscaled: list[tuple[str, str]] = field(default_factory=list)  # (file name, by how much): they train blurry

    def captions(self) -> dict[str, str]:
        """Each image's caption by file name: what a saved state records, so a resume can tell the
        images it continues on are the ones it started with."""
        return {item.name: item.caption for item in self.images}

    def changes_since(self, saved: dict[str, str]) -> str:
        """What differs from a saved run's `captions()`, named ('' when nothing does)."""
        now = self.captions()

        def listed(names: list[str]) -> str:
            return ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

        parts = [f"{what} {listed(names)}" for what, names in (
            ("added", [n for n in now if n not in saved]), ("removed", [n for n in saved if n not in now]),
            ("a new caption for", [n for n in now if n in saved and now[n] != saved[n]])) if names]
        return "; ".join(parts)

    def subsets(self, root_name: str) -> dict[str, tuple[int, int]]:
        """(repeats, image count) by subset, as sd-scripts' ss_dataset_dirs names them: each kohya
        `N_name/` folder, and the other images under `root_name` (the folder or zip given)."""
        out: dict[str, tuple[int, int]] = {}
        for item in self.images:
            name = item.subset or root_name
            out[name] = (item.repeats, out.get(name, (0, 0))[1] + 1)
        return out

    def tag_frequency(self) -> dict[str, int]:
        """Comma-separated caption tags and their counts over every image."""
        counts: Counter[str] = Counter()
        for item in self.images:
            counts.update(_tags(item.caption))
        return dict(counts)

    def subset_tags(self, root_name: str) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per subset (see `subsets`), caption tags and their counts."""
        counts: dict[str, Counter[str]] = {}
        for item in self.images:
            counts.setdefault(item.subset or root_name, Counter()).update(_tags(item.caption))
        return {name: dict(c) for name, c in counts.items()}


def _tags(caption: str) -> list[str]:
    """A caption's comma-separated tags, as kohya counts them."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def _unsafe_entry(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry would escape the extraction folder, or None."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        return "is an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "escapes the folder (..)"
    return None


def extract_zip(path: Path, dest: Path, max_bytes: int = MAX_ZIP_BYTES) -> Path:
    """Extract the images and captions of `path` into `dest`; TrainError naming the entry when a
    zip entry would escape `dest`, or when the zip would unpack to more than `max_bytes`."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TrainError(f"{path}: not a readable zip file ({exc})") from exc
    with zf:
        wanted: list[zipfile.ZipInfo] = []
        total = 0
        for info in zf.infolist():
            why = _unsafe_entry(info)
            if why is not None:
                raise TrainError(f"{path}: zip entry {info.filename!r} {why}; refusing to extract this zip")
            suffix = PurePosixPath(info.filename).suffix.lower()
            if info.is_dir() or (suffix not in IMAGE_SUFFIXES | OTHER_IMAGE_SUFFIXES and suffix != ".txt"):
                continue  # non-images (and macOS __MACOSX folders' non-images) are ignored
            if any(part.startswith("__MACOSX") for part in PurePosixPath(info.filename).parts):
                continue
            total += info.file_size
            if total > max_bytes:
                raise TrainError(f"{path}: unpacks to more than {max_bytes / 1024**2:.0f} MiB of images"
                                 " (the zip size cap); use fewer or smaller images")
            wanted.append(info)
        written = 0
        for info in wanted:
            target = dest / PurePosixPath(info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # a header that lies about sizes
                        raise TrainError(f"{path}: unpacks to more than {max_bytes / 1024**2:.0f} MiB"
                                         " (the zip size cap)")
                    out.write(chunk)
    return dest


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """(height, width) buckets of about resolution² pixels, sides multiples of `step`, ratios up to 2:1."""
    area = resolution * resolution
    out = set()
    side = step * max(1, int(resolution / 2**0.5 / step))
    while side <= resolution * 2:
        other = max(step, int(area / side) // step * step)
        if max(side, other) / min(side, other) <= 2.0:
            out.add((side, other))
            out.add((other, side))
        side += step
    out.add((resolution // step * step, resolution // step * step))
    return sorted(out)


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    import math

    ratio = math.log(height / width)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def fit(image: Any, size: tuple[int, int]) -> tuple[Any, tuple[int, int]]:
    """Resize to cover `size` (height, width) and centre-crop; returns the image and (top, left)."""
    from PIL import Image

    h, w = size
    scale = max(h / image.height, w / image.width)
    rh, rw = max(h, round(image.height * scale)), max(w, round(image.width * scale))
    resized = image.resize((rw, rh), Image.Resampling.LANCZOS)
    top, left = (rh - h) // 2, (rw - w) // 2
    return resized.crop((left, top, left + w, top + h)), (top, left)


def read_caption(path: Path) -> str:
    """A caption file as its editor saved it: UTF-8 (with or without BOM), UTF-16/32 with a BOM
    (Windows Notepad's "Unicode"), else the Windows code page older tools write (cp1252)."""
    import codecs

    raw = path.read_bytes()
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(encoding, errors="replace")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def caption_for(image_path: Path, template: str, token: str, *, require_token: bool) -> str:
    """`<image>.txt` beside the image (kohya), else (or when it is empty) `template` (the caption of
    the image's kohya folder, or the run's template); `{token}` is replaced either way.
    With pivotal tuning the token must appear, so a caption without it gets it in front."""
    side = image_path.with_suffix(".txt")
    text = " ".join(read_caption(side).split()) if side.is_file() else ""
    text = text or template  # no caption file, or an empty one (a captioning tool stopped early)
    text = text.replace("{token}", token)
    if require_token and token not in text:
        text = f"{token}, {text}" if text else token
    return text


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | OTHER_IMAGE_SUFFIXES
                  and not any(part.startswith(".") or part in NOT_IMAGE_FOLDERS for part in p.relative_to(root).parts))


def written_by_train(path: Path, root: Path) -> bool:
    """A run's own images: `<stem>.preview.png` beside `<stem>.safetensors`, or anything in a
    `<stem>.train-state/` folder (samples). An output kept in the image folder leaves them there,
    and the next run must not train on them."""
    if any(part.endswith(".train-state") for part in path.relative_to(root).parts[:-1]):
        return True
    name = path.name
    return name.endswith(".preview.png") and path.with_name(name[: -len(".preview.png")] + ".safetensors").is_file()


def to_rgb(image: Any) -> Any:
    """8-bit RGB as an image viewer shows the file: EXIF orientation applied (phone photos), 16-bit
    grey scaled rather than clipped to white, transparent pixels on white rather than black."""
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: the pixels are still good
        pass
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        import numpy as np

        grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(grey, "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_dataset(folder: Path, *, resolution: int, step: int, template: str, token: str,
                 require_token: bool, label: str | None = None) -> Dataset:
    """Every readable image under `folder`, fitted to its bucket; unreadable ones are skipped and named.
    `label` names the input in errors (the .zip the user gave, not the folder it was unpacked to)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_IMAGE_PIXELS)
    buckets = bucket_sizes(resolution, step)
    images: list[TrainImage] = []
    skipped: list[tuple[str, str]] = []
    upscaled: list[tuple[str, str]] = []
    for path in image_files(folder):
        name = path.relative_to(folder).as_posix()
        parts = path.relative_to(folder).parts
        kohya = KOHYA_FOLDER.fullmatch(parts[0]) if len(parts) > 1 else None
        if kohya is not None and int(kohya.group(1)) == 0:
            skipped.append((name, "in a 0_ folder: 0 repeats, as kohya skips it"))
            continue
        if kohya is not None and len(parts) > 2:  # sd-scripts globs a <repeats>_<name> folder, not its subfolders
            skipped.append((name, f"in a subfolder of {parts[0]}/: kohya trains only on the images directly in it"))
            continue
        if written_by_train(path, folder):
            skipped.append((name, "a preview or sample written by loraprompt train, not a training image"))
            continue
        if path.suffix.lower() in OTHER_IMAGE_SUFFIXES:
            skipped.append((name, f"{path.suffix} images cannot be read here; convert it to PNG or JPEG"))
            continue
        try:
            with Image.open(path) as probe:
                probe.verify()  # truncated or corrupt files fail here or on load below
            with Image.open(path) as img:
                img.load()
                rgb = to_rgb(img)
        except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, DecompressionBombError)
            skipped.append((name, f"{type(exc).__name__}: {exc}"))
            continue
        if rgb.width < 8 or rgb.height < 8:
            skipped.append((name, f"too small ({rgb.width}x{rgb.height})"))
            continue
        size = nearest_bucket(rgb.height, rgb.width, buckets)
        if (scale := max(size[0] / rgb.height, size[1] / rgb.width)) > MAX_UPSCALE:
            upscaled.append((name, f"{rgb.width}x{rgb.height} is upscaled {scale:.1f}x to {size[1]}x{size[0]}: the LoRA"
                                   " learns its blur (use a larger image, or a lower --resolution)"))
        fitted, crop = fit(rgb, size)
        # sd-scripts captions an image of `10_sks dog/` without a caption file "sks dog" (its class tokens)
        own = " ".join(kohya.group(2).split()) if kohya else ""
        images.append(TrainImage(name, fitted, caption_for(path, own or template, token, require_token=require_token),
                                 (rgb.height, rgb.width), crop, size, int(kohya.group(1)) if kohya else 1,
                                 parts[0] if kohya else ""))
    if not images:
        detail = "; ".join(f"{n}: {why}" for n, why in skipped[:5]) or "no .png/.jpg/.webp/.bmp/.gif/.tif files"
        raise TrainError(f"{label or folder}: no usable image ({detail})")
    return Dataset(images, skipped, upscaled)
