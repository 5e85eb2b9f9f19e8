"""Which image "Send to img2img" sends: the one selected in the batch gallery, as A1111 sends its
gallery's selected image (`selected_gallery_index()` in its page), else the first image of the
txt2img result (the grid of an X/Y grid)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraprompt.ui.paste import png_infotext

# the Send click's script: the index of the image selected (shown in the preview) in the batch
# gallery, -1 when none is, as the last of its inputs
SELECTED_JS = """(...args) => {
  const root = (document.querySelector("gradio-app") || {}).shadowRoot || document;
  const find = (size) => [...root.querySelectorAll("#lp-batch .thumbnail-item." + size)]
    .findIndex((item) => item.classList.contains("selected"));
  const index = Math.max(find("thumbnail-lg"), find("thumbnail-small"));
  return [...args.slice(0, @INPUTS - 1), index];
}"""


def selected_js(inputs: int) -> str:
    return SELECTED_JS.replace("@INPUTS", str(inputs))


def image_to_send(saved: str, infotext: str, batch: list[Any] | None, index: Any,
                  outputs_dir: Path, *, shown: str | None = None) -> tuple[Path, str] | None:
    """The image to send and the infotext it was made with, None when there is no result yet.
    `batch`: the batch gallery's images (gradio's (path, caption) pairs; the files gradio serves,
    copies of the saved PNGs); `index`: the one selected there (-1: none), sent with its own
    infotext (its own seed). Else the first image under `*-images` that "Saved to" lists; else,
    when nothing was saved (an interrupted image), `shown`: the result image's file that gradio
    serves."""
    items = batch or []
    if isinstance(index, (int, float)) and 0 <= int(index) < len(items):
        item = items[int(index)]
        path = Path(item[0] if isinstance(item, (list, tuple)) else item)
        return path, png_infotext(str(path)) or infotext
    found = [Path(line) for line in (saved or "").splitlines() if line.strip()]
    images = [p for p in found if p.parent.parent.name.endswith("-images")] or found
    if not images and not items and shown and infotext and Path(shown).is_file():
        return Path(shown), infotext
    if not images or not infotext or not images[0].resolve().is_relative_to(outputs_dir.resolve()):
        return None
    return images[0], infotext
