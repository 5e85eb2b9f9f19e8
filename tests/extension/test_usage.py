"""Generations in the fake A1111 feed the library's usage history ("most used" / "last used")."""

from __future__ import annotations

import sys
from pathlib import Path

from loraprompt.library import Library

from .conftest import Webui


def started(webui: Webui) -> Library:
    webui.write_lora("style", seed=1)
    webui.write_lora("detail", seed=2)
    webui.write_lora("unused", seed=3)
    webui.load_extension()
    webui.start()
    library: Library = webui.state.runtime.library
    return library


def uses(library: Library) -> dict[str, tuple[int, int]]:
    return {e.name: library.usage(e) for e in library.entries}


def test_each_applied_lora_counts_once_per_generation(webui: Webui) -> None:
    library = started(webui)
    webui.generate("a cat <lora:style:0.5> <lora:detail:1>")
    webui.generate("a dog <lora:style:1>", n_iter=3)  # three batches, one generation job
    got = uses(library)
    assert got["style"][0] == 2
    assert got["detail"][0] == 1
    assert got["unused"] == (0, 0)
    assert got["style"][1] >= got["detail"][1] > 0


def test_missing_and_skipped_loras_are_not_counted(webui: Webui) -> None:
    library = started(webui)
    webui.generate("<lora:nowhere:1> <lora:style:1>")
    webui.generate("no tags at all")
    got = uses(library)
    assert got["style"][0] == 1
    assert got["detail"] == (0, 0)
    assert sum(n for n, _ in got.values()) == 1


def test_hires_pass_counts_its_own_loras_once(webui: Webui) -> None:
    library = started(webui)
    webui.generate("<lora:style:1>", enable_hr=True, hr_prompt="<lora:detail:1> <lora:style:1>", steps=1)
    got = uses(library)
    assert (got["style"][0], got["detail"][0]) == (1, 1)


def test_history_survives_a_new_library_on_the_same_cache(webui: Webui) -> None:
    library = started(webui)
    webui.generate("<lora:detail:1>")
    cache_dir = sys.modules["loraprompt_a1111.webui"].cache_dir()
    reopened = Library(library.roots, cache_dir=cache_dir)
    assert uses(reopened)["detail"][0] == 1


def test_generations_without_loras_leave_the_history_file_alone(webui: Webui) -> None:
    started(webui)
    cache_dir = Path(sys.modules["loraprompt_a1111.webui"].cache_dir())
    webui.generate("no tags at all")
    webui.generate("<lora:nowhere:1>")
    assert list(cache_dir.glob("usage-*")) == []
    webui.generate("<lora:style:1>")
    assert len(list(cache_dir.glob("usage-*"))) == 1
