"""Which image Send to img2img sends (loraprompt.ui.send), without a browser: the one selected in
the batch gallery with its own infotext, else the first image of the result; the page's side is in
test_webui_generation_browser.py (a batch's third image)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from loraprompt.ui.outputs import save_png
from loraprompt.ui.send import image_to_send


def _result(outputs: Path) -> tuple[str, list[Path]]:
    images = [save_png(Image.new("RGB", (8, 8)), f"a cat\nSteps: 2, Seed: {seed}", outputs, seed) for seed in (5, 6)]
    grid = save_png(Image.new("RGB", (16, 8)), "a cat\nSteps: 2, Seed: 5", outputs, 5, "txt2img-grids")
    return "\n".join(str(p) for p in (grid, *images)), images


def test_the_selected_image_goes_with_its_own_infotext(tmp_path: Path) -> None:
    saved, images = _result(tmp_path)
    gallery = [(str(p), None) for p in images]  # what gradio hands over for the batch gallery
    assert image_to_send(saved, "a cat\nSteps: 2, Seed: 5", gallery, 1, tmp_path) == (images[1], "a cat\nSteps: 2, Seed: 6")


def test_without_a_selection_the_first_image_goes(tmp_path: Path) -> None:
    saved, images = _result(tmp_path)
    gallery = [(str(p), None) for p in images]
    for index in (-1, 2, None):  # none selected, or an index the gallery no longer has
        assert image_to_send(saved, "a cat\nSteps: 2, Seed: 5", gallery, index, tmp_path) == (images[0], "a cat\nSteps: 2, Seed: 5")
    assert image_to_send("", "", None, -1, tmp_path) is None  # nothing generated yet
    assert image_to_send("/etc/hostname", "x", None, -1, tmp_path) is None  # only files under the outputs


def test_an_image_that_was_not_saved_goes_from_the_file_the_page_shows(tmp_path: Path) -> None:
    """An interrupted image is shown but not saved (as in A1111): "Saved to" is empty, and the
    result image's file (gradio's copy) goes with the infotext shown beside it."""
    shown = tmp_path / "gradio" / "image.png"
    shown.parent.mkdir()
    Image.new("RGB", (8, 8)).save(shown)
    assert image_to_send("", "a cat\nSteps: 9", None, -1, tmp_path / "outputs", shown=str(shown)) == (shown, "a cat\nSteps: 9")
    assert image_to_send("", "", None, -1, tmp_path / "outputs", shown=str(shown)) is None  # no result yet
    assert image_to_send("", "a cat", None, -1, tmp_path / "outputs", shown=str(tmp_path / "gone.png")) is None
    batch = [(str(shown), None)]  # a batch's grid is shown: only a selected image of it goes
    assert image_to_send("", "a cat", batch, -1, tmp_path / "outputs", shown=str(shown)) is None
