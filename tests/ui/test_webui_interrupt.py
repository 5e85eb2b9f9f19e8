"""Interrupt and Skip in the web UI's engine, as A1111's buttons: what they cut short is shown but
saved only with "Save incomplete images" (for a generation or, through the API, a request), the
next batch or generation runs whole, and a press after a batch's last step cuts nothing."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from loraprompt.ui.txt2img import Txt2Img

from .conftest import small_request

os.environ["HF_HUB_OFFLINE"] = "1"


_request = small_request


def test_interrupt_stops_after_the_current_step(engine: Txt2Img) -> None:
    seen: list[int] = []

    def on_step(i: int, total: int) -> None:
        seen.append(i)
        if i == 2:
            engine.interrupt()

    before = set(engine.outputs_dir.rglob("*.png"))
    result = engine.generate(_request("a cat", steps=10), on_step=on_step)
    assert seen == [1, 2] and result.image.size == (64, 64)
    # as A1111 without "Save incomplete images": shown (returned), not saved, and the user is told
    assert result.path is None and set(engine.outputs_dir.rglob("*.png")) == before
    assert [(d.code, d.data) for d in result.diagnostics] == [("I-INTERRUPTED", {"step": 2}), ("I-NOT-SAVED", {"images": 1})]
    full = engine.generate(_request("a cat", steps=3), on_step=lambda i, n: seen.append(i))
    assert seen[2:] == [1, 2, 3] and full.diagnostics == [] and full.path.is_file()  # the next one runs to the end


def test_incomplete_images_are_saved_when_asked_and_a_grid_only_when_whole(engine: Txt2Img) -> None:
    """`--save-incomplete-images` (A1111's setting) saves what an Interrupt or a Skip cut short. Without
    it, a skipped batch is not saved while the next, whole batch is, and no grid with a hole is written."""

    def skip_at_two(i: int, total: int) -> None:
        if i == 2:
            engine.skip()

    mixed = engine.generate(_request("a cat", steps=4, batch_count=2, seed=60), on_step=skip_at_two)
    assert [img.path is None for img in mixed.images] == [True, False] and mixed.images[1].path.is_file()
    assert mixed.grid is not None and mixed.grid_path is None
    assert [d.code for d in mixed.diagnostics] == ["I-SKIPPED", "I-NOT-SAVED"]
    engine.save_incomplete = True
    try:
        kept = engine.generate(_request("a cat", steps=4, batch_count=2, seed=60), on_step=skip_at_two)
    finally:
        engine.save_incomplete = False
    assert all(img.path.is_file() for img in kept.images) and kept.grid_path.is_file()
    assert [d.code for d in kept.diagnostics] == ["I-SKIPPED"]
    assert np.array_equal(np.asarray(Image.open(kept.images[0].path)), np.asarray(mixed.images[0].image))


def test_skip_ends_the_batch_being_sampled_and_goes_on_with_the_next(engine: Txt2Img) -> None:
    """A1111's Skip: the batch it comes in ends after the current step, kept unfinished, and the next
    batch of the batch count runs to its end (Interrupt would stop them all)."""
    seen: list[int] = []

    def on_step(i: int, total: int) -> None:
        seen.append(i)
        if i == 2:
            engine.skip()

    result = engine.generate(_request("a cat", steps=5, batch_count=2, seed=40), on_step=on_step, save=False)
    # two steps of the first batch, its other three counted done at once (the bar goes on to 100%, as
    # A1111's moves on to the next job), then all five of the second
    assert seen == [1, 2, 5, 6, 7, 8, 9, 10]
    assert [img.seed for img in result.images] == [40, 41]
    assert [(d.code, d.data) for d in result.diagnostics] == [("I-SKIPPED", {"batch": 1})]
    whole = engine.generate(_request("a cat", steps=5, batch_count=2, seed=40), save=False)
    first, second = ([np.asarray(img.image, dtype=np.float32) for img in r.images] for r in (result, whole))
    assert not np.array_equal(first[0], second[0])  # the skipped image is unfinished
    assert np.array_equal(first[1], second[1]) and whole.diagnostics == []  # the next batch and run are whole


def test_a_press_after_the_last_step_cuts_nothing(engine: Txt2Img) -> None:
    """An Interrupt or a Skip that comes after a batch's last step (while it decodes, or as the
    last step's callback runs) leaves whole images: saved, with no "unfinished" message. They were
    marked cut short and not saved, because the flag was read only after the decode."""
    whole = engine.generate(_request("a cat", steps=3, batch_count=2, seed=70), save=False)
    for press in (engine.interrupt, engine.skip):
        def at_the_end(i: int, total: int, press: Any = press) -> None:
            if i == 3:  # the first batch's last step
                press()

        result = engine.generate(_request("a cat", steps=3, batch_count=2, seed=70), on_step=at_the_end)
        assert result.images[0].path is not None and result.images[0].path.is_file(), press
        assert np.array_equal(np.asarray(result.images[0].image), np.asarray(whole.images[0].image))
        assert "I-NOT-SAVED" not in [d.code for d in result.diagnostics] and "I-SKIPPED" not in [d.code for d in result.diagnostics]
        if press == engine.interrupt:  # it still stops the batches after it
            assert len(result.images) == 1 and [d.code for d in result.diagnostics] == ["I-INTERRUPTED"]
        else:  # a Skip ends only the batch it came in, which was whole
            assert [img.path is not None for img in result.images] == [True, True] and result.grid_path is not None
            assert result.diagnostics == []
    # a Skip pressed after the last batch's last step is not left over for the next generation
    engine.skip()
    follow = engine.generate(_request("a cat", steps=3, seed=70))
    assert follow.diagnostics == [] and follow.path is not None
