"""Grids: the grid of a batch (A1111's `image_grid`), and the X/Y strength grid that tests a LoRA:
rows of one LoRA's weights against columns of seeds or of a second LoRA's weights, rendered as one
image with the row and column labels drawn on it (A1111's X/Y/Z plot is the model)."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

COLUMN_KINDS = ("Seed", "Second LoRA weight")
MAX_CELLS = 100
_RANGE = re.compile(r"^\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*(?:\(\s*\+?\s*([\d.]+)\s*\)|\[\s*(\d+)\s*\])?\s*$")


def image_grid(images: list[Any], rows: int | None = None) -> Any:
    """Images in a grid as A1111 lays a batch out: rows = floor(sqrt(n)), lowered until it divides n."""
    from PIL import Image

    if rows is None:
        rows = max(1, math.floor(math.sqrt(len(images))))
        while len(images) % rows:
            rows -= 1
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image, box=(i % cols * w, i // cols * h))
    return grid


def parse_values(text: str, what: str, integers: bool = False) -> list[float]:
    """A1111's X/Y value lists: `0, 0.5, 1`, a range `0-1 (+0.25)` (step) or `0-1 [5]` (count);
    a plain range `1-4` steps by 1. ValueError naming `what` and the item it cannot read."""
    values: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        match = _RANGE.match(item) if not re.fullmatch(r"[+-]?[\d.]+", item) else None
        try:
            if match is None:
                values.append(float(item))
                continue
            start, end = float(match.group(1)), float(match.group(2))
            if match.group(4):
                count = int(match.group(4))
                values.extend(start + (end - start) * i / max(1, count - 1) for i in range(count))
            else:
                step = float(match.group(3) or 1.0)
                if step <= 0:
                    raise ValueError
                n = math.floor((end - start) / step + 1e-9) + 1
                values.extend(start + step * i for i in range(max(0, n)))
        except ValueError:
            raise ValueError(f"{what}: cannot read {item!r} (write numbers such as 0, 0.5, 1 or a range 0-1 (+0.25))") from None
    if not values:
        raise ValueError(f"{what}: no values given")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: values must be finite numbers")
    values = [round(v, 6) for v in values]
    if integers:
        if any(v != int(v) for v in values):
            raise ValueError(f"{what}: seeds must be whole numbers")
        return [float(int(v)) for v in values]
    return values


def set_lora_weight(prompt: str, name: str, weight: float, library: Any = None) -> str:
    """`prompt` with LoRA `name` at `weight` (text encoder and UNet): its tags are rewritten in place,
    their other options kept; a prompt without it gets the tag appended. With `library`, a tag is
    that LoRA's when it resolves to the same file as `name` (`Demo_Neon` for `demo_neon`, an alias)."""
    from loraprompt.syntax import format_activation, parse

    parsed = parse(prompt)
    target = _file_of(library, name) if library is not None else None

    def same(a: Any) -> bool:
        return a.name == name or (target is not None and _file_of(library, a.name, a.hash) == target)

    found = [a for a in parsed.loras if a.span is not None and same(a)]
    if not found:
        return f"{prompt.rstrip()} {_axis_tag(library, name, weight)}".lstrip()
    out = prompt
    for a in sorted(found, key=lambda a: a.span[0], reverse=True):  # type: ignore[index]
        start, end = a.span  # type: ignore[misc]
        tag = format_activation(replace(a, te=weight, unet=weight, hr_te=None, hr_unet=None))
        out = out[:start] + tag + out[end:]
    return out


def _axis_tag(library: Any, name: str, weight: float) -> str:
    """The tag an axis adds: by `name`, or, for a name no tag can carry (`C#odd`), as the gallery's
    card writes it (the alias, or a stand-in with the file's `hash=`); ValueError when there is none."""
    from loraprompt.library.resolve import tag_breakers, tag_hash, writable_name
    from loraprompt.syntax import LoraActivation, format_activation

    entry = library.resolve(name).entry if library is not None and tag_breakers(name) else None
    if entry is None:  # (a clean name is written as it is, with no lookup per cell)
        return format_activation(LoraActivation(name, weight, weight))
    choice = writable_name(library, entry, name, taken={e.name for e in library.entries})
    short, why = tag_hash(library, entry) if choice.by_hash else (None, "")
    if choice.by_hash and short is None:
        raise ValueError(f"X/Y grid: {name} cannot be written in a tag and its hash cannot be read ({why}): rename the file")
    return format_activation(LoraActivation(choice.name, weight, weight, hash=short))


def _file_of(library: Any, name: str, hash: str | None = None) -> str | None:
    """The path of the file `name` (and `hash=`) resolves to in `library`, None when it resolves to none."""
    entry = library.resolve(name, hash=hash).entry
    return None if entry is None else str(entry.path)


def axis_choices(library: Any, current: tuple[str | None, str | None] = (None, None)) -> tuple[list[str], str | None, str | None]:
    """The LoRA names the axes' dropdowns list (the library's current entries that can be loaded:
    not broken, not offline) and their values: `current` where set, else the first name for the rows
    and a different one for the columns (the same LoRA on both axes makes identical rows), None when
    there is none to choose."""
    usable = (e for e in library.entries if not e.error and not e.offline)
    names = sorted({library.display_name(e) for e in usable}, key=lambda n: (n.casefold(), n))
    rows = current[0] or (names[0] if names else None)
    columns = current[1] or next((n for n in names if n != rows), None)
    return names, rows, columns


def check_loras(library: Any, spec: StrengthGrid) -> None:
    """ValueError, before anything is generated, when an axis's LoRA is not in `library` (named once,
    with the resolver's suggestion) or both axes name the same file (every row would be the same)."""
    axes = [("rows", spec.lora)] + ([("columns", spec.lora2)] if spec.columns == COLUMN_KINDS[1] else [])
    files = []
    for axis, name in axes:
        found = library.resolve(name)
        if found.entry is None:
            why = "; ".join(d.message for d in found.diagnostics) or f"LoRA {name!r} not found"
            raise ValueError(f"X/Y grid: the LoRA of the {axis}: {why}")
        files.append(str(found.entry.path))
    if len(files) == 2 and files[0] == files[1]:
        raise ValueError(f"X/Y grid: the rows and the columns both set the weight of {spec.lora!r}"
                         + (f" (as {spec.lora2!r})" if spec.lora2 != spec.lora else "")
                         + ": each column's weight would replace the row's, so every row would be the same."
                         " Choose a different Second LoRA, or Seed columns")


@dataclass
class StrengthGrid:
    """Rows: `lora` at each of `weights`. Columns: `seeds` (kind "Seed"; -1 draws one), or
    `lora2` at each of `weights2` (kind "Second LoRA weight", on the first seed)."""

    lora: str
    weights: list[float]
    columns: str = "Seed"
    seeds: list[int] = field(default_factory=lambda: [-1])
    lora2: str = ""
    weights2: list[float] = field(default_factory=list)

    def check(self) -> None:
        """ValueError naming what is missing or too large."""
        if not self.lora.strip():
            raise ValueError("X/Y grid: name the LoRA whose weights make the rows")
        if self.columns not in COLUMN_KINDS:
            raise ValueError(f"X/Y grid: columns must be one of {', '.join(COLUMN_KINDS)}, not {self.columns!r}")
        if self.columns == COLUMN_KINDS[1] and (not self.lora2.strip() or not self.weights2):
            raise ValueError("X/Y grid: name the second LoRA and its weights for the columns")
        if not self.weights or len(self.weights) * len(self.column_values()) > MAX_CELLS:
            raise ValueError(f"X/Y grid: between 1 and {MAX_CELLS} cells, not {len(self.weights)}x{len(self.column_values())}")

    def column_values(self) -> list[float]:
        return list(self.weights2) if self.columns == COLUMN_KINDS[1] else [float(s) for s in self.seeds]


@dataclass
class GridResult:
    """The labelled grid image, where it was saved, its infotext (the first cell's) and the cells."""

    image: Any
    path: Any
    infotext: str
    cells: list[Any]
    diagnostics: list[Any]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, width: int, size: int, probe: Any) -> tuple[str, Any]:
    """`text` wrapped at spaces to lines no wider than `width`, in the largest font from `size` down to 8
    where it fits (A1111's grid shrinks its labels the same way); a word too long even then is cut."""
    for s in range(size, 7, -1):
        font = _font(s)
        lines: list[str] = []
        for word in text.split(" "):
            joined = f"{lines[-1]} {word}" if lines else word
            if lines and probe.textlength(joined, font=font) <= width:
                lines[-1] = joined
            else:
                lines.append(word)
        if all(probe.textlength(line, font=font) <= width for line in lines):
            return "\n".join(lines), font
    cut: list[str] = []
    for line in lines:
        while line:
            n = len(line)
            while n > 1 and probe.textlength(line[:n], font=font) > width:
                n -= 1
            cut.append(line[:n])
            line = line[n:]
    return "\n".join(cut), font


def labelled_grid(images: list[list[Any]], row_labels: list[str], col_labels: list[str]) -> Any:
    """Rows x columns of equal-size images with the column labels above and the row labels on the left.
    A column label wider than its cell wraps (and if need be shrinks) so that labels never overlap."""
    from PIL import Image, ImageDraw

    w, h = images[0][0].size
    size = max(12, min(32, w // 10))
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def box(text: str, font: Any = font) -> tuple[int, int]:
        left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font, align="center")
        return int(right - left), int(bottom - top)

    pad = max(6, w // 32)
    columns = [_fit(t, w - 2 * pad, size, probe) for t in col_labels]
    left = max(box(t)[0] for t in row_labels) + 2 * pad
    top = max(box(t, f)[1] for t, f in columns) + 2 * pad
    grid = Image.new("RGB", (left + w * len(col_labels), top + h * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (text, cfont) in enumerate(columns):
        x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=cfont, align="center")
        draw.multiline_text((left + c * w + (w - (x1 - x0)) // 2 - x0, (top - (y1 - y0)) // 2 - y0), text,
                            fill="black", font=cfont, align="center")
    for r, text in enumerate(row_labels):
        tw, th = box(text)
        draw.text((left - pad - tw, top + r * h + (h - th) // 2), text, fill="black", font=font)
        for c, image in enumerate(images[r]):
            grid.paste(image, box=(left + c * w, top + r * h))
    return grid


def render_strength_grid(engine: Any, request: Any, spec: StrengthGrid,
                         on_step: Callable[[int, int], None] | None = None) -> GridResult:
    """Generate every cell with `engine.generate` (one image each, saved with its infotext) and
    save the labelled grid under `<outputs>/txt2img-grids`. An interrupt leaves grey cells."""
    from PIL import Image

    from loraprompt.ui.txt2img import MAX_SEED, save_png

    spec.check()
    check_loras(engine.library, spec)
    by_seed = spec.columns == COLUMN_KINDS[0]
    first_seed = random.randint(0, MAX_SEED) if request.seed < 0 else int(request.seed)
    seeds = [random.randint(0, MAX_SEED) if s < 0 else int(s) for s in spec.seeds] if by_seed else [first_seed]
    columns = [float(s) for s in seeds] if by_seed else list(spec.weights2)
    total_cells = len(spec.weights) * len(columns)
    cells: list[Any] = []
    diagnostics: list[Any] = []
    rows: list[list[Any]] = []
    for r, weight in enumerate(spec.weights):
        row: list[Any] = []
        for c, value in enumerate(columns):
            index = r * len(columns) + c
            if engine._interrupted.is_set() and cells:
                row.append(None)
                continue
            prompt = set_lora_weight(request.prompt, spec.lora, weight, engine.library)
            seed = int(value) if by_seed else seeds[0]
            if not by_seed:
                prompt = set_lora_weight(prompt, spec.lora2, value, engine.library)

            def step(i: int, n: int, index: int = index) -> None:
                if on_step is not None:
                    on_step(index * n + i, total_cells * n)

            result = engine.generate(replace(request, prompt=prompt, seed=seed, batch_count=1, batch_size=1), on_step=step)
            cells.append(result)
            diagnostics.extend(d for d in result.diagnostics if d not in diagnostics)
            row.append(result.image)
        rows.append(row)
    size = cells[0].image.size
    filled = [[image if image is not None else Image.new("RGB", size, "grey") for image in row] for row in rows]
    row_labels = [f"{spec.lora}: {w:g}" for w in spec.weights]
    col_labels = [f"Seed: {int(v)}" for v in columns] if by_seed else [f"{spec.lora2}: {v:g}" for v in columns]
    grid = labelled_grid(filled, row_labels, col_labels)
    path = save_png(grid, cells[0].infotext, engine.outputs_dir, cells[0].seed, "txt2img-grids")
    return GridResult(grid, path, cells[0].infotext, cells, diagnostics)
