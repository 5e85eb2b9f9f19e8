"""Overlapped streaming for the tools: reading, computing and writing run at once, in bounded memory.

`overlapped(items, load, compute, store)` runs `load` (file reads) in a read-ahead thread, `compute`
in the calling thread and `store` (file writes) in a write-behind thread, each item in order. Two
byte budgets bound what waits between the stages: at most `read_ahead` bytes loaded but not yet
computed, and at most `write_behind` bytes computed but not yet written (an item larger than its
budget still passes, alone). File reads and writes and torch kernels release the GIL, so on two
cores the three stages really overlap. The first error in any stage stops the others and is raised
in the caller once both threads have ended, so an `atomic_path` around it removes a clean file.

Devices: `resolve_device` turns `cpu`/`cuda`/`cuda:N`/`auto` into a torch device the tools compute on;
tensors go there for the arithmetic only and come back to the CPU before they are written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

from loraprompt.errors import ToolError

READ_AHEAD = 128 << 20  # bytes loaded ahead of the computation
WRITE_BEHIND = 128 << 20  # bytes computed but not yet written
DEVICES = ("auto", "cpu", "cuda")

T = TypeVar("T")
L = TypeVar("L")
C = TypeVar("C")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`cpu` (default), `cuda`, `cuda:N` or `auto` (CUDA when available) as a device the tools can
    compute on; ToolError for an unknown name, a missing GPU, or the data-less `meta` device."""
    name = "cpu" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ToolError(f"unknown device {name!r}; choose cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ToolError(f"device {name!r} is not supported by the tools; choose cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ToolError(f"device {name!r}: no CUDA GPU is available to this torch "
                        f"({torch.__version__}); use --device cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ToolError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A result back on the CPU (a no-op there), ready to be written."""
    return tensor if tensor.device.type == "cpu" else tensor.to("cpu")


class Budget:
    """Bytes held between two stages; `take` waits until `n` more fit (or nothing is held)."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._stop = stop
        self._cond = threading.Condition()

    def take(self, n: int) -> bool:
        """Hold `n` bytes; False when the pipeline was stopped meanwhile."""
        with self._cond:
            while self.held and self.held + n > self.limit:
                if self._stop.is_set():
                    return False
                self._cond.wait(0.05)
            self.held += n
            self.peak = max(self.peak, self.held)
            return not self._stop.is_set()

    def give(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()


_END = object()


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                return _END


def overlapped(items: Iterable[T], load: Callable[[T], L], compute: Callable[[T, L], C],
               store: Callable[[T, C], None], *, size: Callable[[T], int],
               read_ahead: int = READ_AHEAD, write_behind: int = WRITE_BEHIND) -> dict[str, int]:
    """load → compute → store for each item, in order, the three stages overlapping; returns the
    peak bytes each budget held. `size(item)` is what the item holds between stages."""
    stop = threading.Event()
    errors: list[BaseException] = []
    loaded: queue.Queue[Any] = queue.Queue()
    computed: queue.Queue[Any] = queue.Queue()
    reads, writes = Budget(read_ahead, stop), Budget(write_behind, stop)
    todo = list(items)

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    def reader() -> None:
        try:
            for item in todo:
                if not reads.take(size(item)):
                    return
                loaded.put((item, load(item)))
        except BaseException as exc:  # handed to the caller
            fail(exc)

    def writer() -> None:
        try:
            while True:
                entry = _get(computed, stop)
                if entry is _END:
                    return
                item, value = entry
                store(item, value)
                del value
                writes.give(size(item))
        except BaseException as exc:  # handed to the caller
            fail(exc)

    threads = [threading.Thread(target=reader, name="loraprompt-read", daemon=True),
               threading.Thread(target=writer, name="loraprompt-write", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        for _ in todo:
            entry = _get(loaded, stop)
            if entry is _END:
                break
            item, value = entry
            result = compute(item, value)
            del value
            reads.give(size(item))
            if not writes.take(size(item)):
                break
            computed.put((item, result))
            del result
        computed.put(_END)
    except BaseException as exc:
        fail(exc)
    finally:
        if errors:
            stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return {"read_ahead_peak": reads.peak, "write_behind_peak": writes.peak}
