"""The tasks a reloaded page picks back up (loraprompt.ui.resume), without a browser: a handler run
under a task id keeps its progress and result for a page that asks later; an unknown or dropped id
changes nothing. The page's side is in test_webui_browser.py (a reload during a generation)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

gr = pytest.importorskip("gradio")

from loraprompt.ui.resume import Tasks  # noqa: E402


def _add(a: str, b: str, progress: Any) -> tuple[str]:
    progress(0, desc="Patching LoRAs")
    progress((1, 2), desc="Sampling")
    return (a + b,)


def _run(coroutine: Any) -> Any:
    """asyncio.run in a thread of its own: Playwright's sync API (the browser tests in this process)
    leaves an event loop running in the main thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _resume(tasks: Tasks, task_id: str) -> Any:
    return _run(tasks.resumer(1)(task_id, progress=lambda value, desc=None: None))


def test_an_ended_task_shows_its_result_until_newer_tasks_drop_it() -> None:
    tasks = Tasks(keep=2)
    run = tasks.tracked(_add, 2)
    assert run("a", "b", "task(1)", progress=lambda *a, **k: None) == ("ab",)
    assert _resume(tasks, "task(1)") == ("ab",)
    assert _resume(tasks, "task(unknown)") == (gr.update(),)  # the page stays as it is
    assert _resume(tasks, "") == (gr.update(),)
    run("c", "d", "task(2)", progress=lambda *a, **k: None)
    run("e", "f", "task(3)", progress=lambda *a, **k: None)
    assert _resume(tasks, "task(1)") == (gr.update(),) and _resume(tasks, "task(3)") == ("ef",)


def test_a_call_without_a_task_id_is_not_kept() -> None:
    """The API's callers (and /run with its nine inputs) send no task id."""
    tasks = Tasks()
    assert tasks.tracked(_add, 2)("a", "b", progress=lambda *a, **k: None) == ("ab",)
    assert tasks.tracked(_add, 2)("a", "b", "", progress=lambda *a, **k: None) == ("ab",)
    assert tasks.get("") is None and not tasks._tasks


def test_a_failed_task_shows_its_error_again() -> None:
    def fail(a: str, progress: Any) -> tuple[str]:
        raise gr.Error("clip skip 4 is deeper than the 2 layers allow")

    tasks = Tasks()
    with pytest.raises(gr.Error):
        tasks.tracked(fail, 1)("a", "task(1)", progress=lambda *a, **k: None)
    with pytest.warns(UserWarning, match="The last generation failed: clip skip 4"):  # a toast in the page
        assert _resume(tasks, "task(1)") == (gr.update(),)


def test_a_running_task_reports_its_progress_then_its_result() -> None:
    tasks, sampling, release = Tasks(), threading.Event(), threading.Event()

    def slow(a: str, progress: Any) -> tuple[str]:
        progress((3, 150), desc="Sampling")
        sampling.set()
        release.wait(60)
        return (a,)

    worker = threading.Thread(target=tasks.tracked(slow, 1), args=("done", "task(1)"),
                              kwargs={"progress": lambda *a, **k: None})
    worker.start()
    assert sampling.wait(60)
    reports: list[Any] = []

    def progress(value: Any, desc: str | None = None) -> None:
        reports.append((value, desc))
        release.set()  # the page has seen the progress: let the task end

    assert _run(tasks.resumer(1)("task(1)", progress=progress)) == ("done",)
    worker.join(60)
    assert reports[0] == ((3, 150), "Sampling")
