"""A generation that a reloaded page (or a second tab) picks back up, as A1111's "restore progress".

A generation runs on in the server when its page is reloaded or closed, but gradio sends its
progress and result only to the page that started it. As A1111 does (`submit()` keeps the task id
in localStorage, `restoreProgressTxt2img` and `progress.restore_progress` bring it back), a
Generate click draws a task id in the page, keeps it in the browser's localStorage under its tab
and hands it to the server as the event's last input; the server keeps each task's progress and,
once it ends, its results (the last `KEEP` tasks, A1111 keeps 2). On load a page asks for the task
of each tab that its localStorage names: a running one shows its progress in that page, then its
result; an ended one its result (or its error, as a warning). The id is forgotten once a page has shown the
result, so a later reload is idle, as in A1111; an id the server does not know (restarted, or
dropped by newer tasks) leaves the page idle without a word."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

KEEP = 8  # tasks whose result a page opened later can still show
MAX_ID = 64  # the longest task id taken from a page
POLL = 0.25  # seconds between a resumed page's progress updates

# the Generate click's script: a fresh task id, kept for this tab and sent as the last of its inputs.
# The page also queues it: its generations end in the order they were queued (one at a time)
SUBMIT_JS = """(...args) => {
  const id = "task(" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10) + ")";
  try { localStorage.setItem("lp-task-@KIND", id); } catch (e) {}
  const pending = (window.lpPending = window.lpPending || {});
  (pending["@KIND"] = pending["@KIND"] || []).push(id);
  args = args.slice(0, @INPUTS);
  args[@INPUTS - 1] = id;
  return args;
}"""
# on load: the task this tab's localStorage names ("" when none), which the page now follows
RESUME_JS = """() => {
  let id = "";
  try { id = localStorage.getItem("lp-task-@KIND") || ""; } catch (e) {}
  (window.lpResumed = window.lpResumed || {})["@KIND"] = id;
  return [id];
}"""
# once this page has shown a task's end: forget its id, unless a newer task took its place. Each
# event forgets the id it followed, never another's: a page load's resume that ends after a Generate
# click (it is queued like any event) must not forget the generation just started. It runs on success
# only: gradio runs .then listeners also when a page being left (reloaded, closed) drops its
# connection, which would forget the task the next page should pick up
_FORGET = """
  try { if (id && localStorage.getItem("lp-task-@KIND") === id) localStorage.removeItem("lp-task-@KIND"); } catch (e) {}
}"""
DONE_JS = """() => {
  const id = ((window.lpPending || {})["@KIND"] || []).shift();""" + _FORGET
RESUMED_JS = """() => {
  const resumed = window.lpResumed || {}, id = resumed["@KIND"];
  resumed["@KIND"] = "";""" + _FORGET
# a failed generation leaves the queue: its id stays kept, and the next page shows its error once
FAILED_JS = """() => { ((window.lpPending || {})["@KIND"] || []).shift(); }"""


def script(template: str, kind: str, inputs: int = 0) -> str:
    """One of the scripts above for the tab `kind` ("txt2img", "img2img") and `inputs` inputs."""
    return template.replace("@KIND", kind).replace("@INPUTS", str(inputs))


class Task:
    """One generation as a resumed page sees it: its last progress report, then its outputs or error."""

    def __init__(self) -> None:
        self.progress: tuple[Any, str | None] = (0, "Patching LoRAs")
        self.outputs: tuple[Any, ...] | None = None
        self.error: str | None = None
        self.ended = threading.Event()


class Tasks:
    """The generations started from pages, by the task id each page drew; the last `keep` are kept."""

    def __init__(self, box: Any = None, keep: int = KEEP) -> None:
        self.box, self.keep = box, keep  # box: the hidden component a page's task id travels in
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, task_id: str) -> Task:
        task = Task()
        with self._lock:
            self._tasks[task_id] = task
            self._tasks.move_to_end(task_id)
            while len(self._tasks) > self.keep:
                self._tasks.popitem(last=False)
        return task

    def get(self, task_id: Any) -> Task | None:
        if not isinstance(task_id, str) or not task_id:
            return None
        with self._lock:
            return self._tasks.get(task_id)

    def tracked(self, fn: Callable[..., tuple[Any, ...]], inputs: int) -> Callable[..., tuple[Any, ...]]:
        """`fn(*values, progress=...)`, a gradio handler of `inputs` inputs, as a handler of one input
        more: the task id, under which its progress and result are kept (none when it is missing
        or empty, as for the API's calls)."""
        import gradio as gr

        def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            task_id = values[inputs] if len(values) > inputs else None
            if not isinstance(task_id, str) or not task_id or len(task_id) > MAX_ID:
                return fn(*values[:inputs], progress=progress)
            task = self.start(task_id)

            def report(value: Any, desc: str | None = None, **kwargs: Any) -> None:
                task.progress = (value, desc)
                progress(value, desc=desc, **kwargs)

            try:
                task.outputs = fn(*values[:inputs], progress=report)
            except Exception as exc:
                task.error = str(getattr(exc, "message", "") or exc)
                raise
            finally:
                task.ended.set()
            return task.outputs

        return run

    def resumer(self, outputs: int) -> Callable[..., Any]:
        """The page-load handler: the task's progress while it runs, then its `outputs` values (a
        failed task's error as a warning); nothing changes for an unknown task id."""
        import gradio as gr

        async def resume(task_id: str, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            task = self.get(task_id)
            if task is None:
                return (gr.update(),) * outputs
            while not task.ended.is_set():
                value, desc = task.progress
                progress(value, desc=desc)
                await asyncio.sleep(POLL)
            if task.error is not None or task.outputs is None:  # shown, not raised: this page's load went well
                gr.Warning(f"The last generation failed: {task.error or 'it stopped without a result'}")
                return (gr.update(),) * outputs
            return task.outputs

        return resume

    def event(self, trigger: Any, fn: Callable[..., tuple[Any, ...]], inputs: list[Any], outputs: list[Any], *,
              kind: str, **kwargs: Any) -> Any:
        """`trigger(fn, inputs, outputs, **kwargs)` (a .click or .submit) whose run a reloaded page of
        tab `kind` picks back up: the page draws the task id into `box`, one input more."""
        event = trigger(self.tracked(fn, len(inputs)), [*inputs, self.box], outputs,
                        js=script(SUBMIT_JS, kind, len(inputs) + 1), **kwargs)
        event.success(None, js=script(DONE_JS, kind))
        if hasattr(event, "failure"):  # gradio 5 and later
            event.failure(None, js=script(FAILED_JS, kind))
        return event

    def resume_on_load(self, app: Any, kind: str, outputs: list[Any]) -> None:
        """On page load, pick up the task that tab `kind`'s localStorage names into `outputs`."""
        app.load(self.resumer(len(outputs)), [self.box], outputs, js=script(RESUME_JS, kind), concurrency_limit=None,
                 api_visibility="private").success(None, js=script(RESUMED_JS, kind))
