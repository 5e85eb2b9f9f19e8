"""Reading many model headers at once in worker processes: the cold scan of a big library.

A header costs ~0.1 ms of Python (JSON parsing, the family detector, the metadata summary), so
100,000 new files take seconds on one core, and threads do not help under the GIL. When a scan
has at least `PARALLEL_MIN` headers to read, they are split into contiguous runs (files of one
folder usually share a trainer's tensor layout, which `Layouts` reads once per worker) and read by
`python -m loraprompt.library.readers` children: plain subprocesses, so the host (a web UI with
threads, Automatic1111, a script without a `__main__` guard) is neither forked nor re-imported.
A child gets a JSON list of paths on stdin and answers a JSON list of `header_record` values, of
`{"error": reason}` for a broken file, or of null for a file the caller must read itself (a
read error, which may go away and is not cached, or any other failure). A child that fails as a whole leaves its files to the caller too, so the result
never differs from a serial scan's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import loraprompt
from loraprompt.errors import AdapterFileError, FileReadError

PARALLEL_MIN = 2000  # headers to read before children pay for their start (~0.15 s each)
MAX_WORKERS = 8
WORKER_MODULE = "loraprompt.library.readers"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(loraprompt.__file__)))


def worker_count(to_read: int, workers: int | None) -> int:
    """How many children read `to_read` headers: `workers` when given (0 or 1: none), else one
    per CPU up to `MAX_WORKERS`, and none below `PARALLEL_MIN` headers."""
    if workers is None:
        if to_read < PARALLEL_MIN:
            return 0
        workers = min(os.cpu_count() or 1, MAX_WORKERS)
    workers = min(workers, to_read)
    return workers if workers > 1 else 0


def read_headers(paths: list[str], workers: int) -> dict[str, dict[str, Any] | str]:
    """path -> `header_record` values, or the reason a broken file gives (a str), for the files
    the children read; a path left out is for the caller to read (`header_record` there)."""
    if workers < 2 or not paths:
        return {}
    size = -(-len(paths) // workers)
    runs = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(len(runs)) as pool:  # threads wait on pipes: the children do the work
        answers = list(pool.map(_run_child, runs))
    found: dict[str, dict[str, Any] | str] = {}
    for run, answer in zip(runs, answers):
        if answer is None:
            continue
        for path, value in zip(run, answer):
            if isinstance(value, dict):
                error = value.get("error")
                found[path] = error if isinstance(error, str) and len(value) == 1 else value
    return found


def _run_child(run: list[str]) -> list[Any] | None:
    """One child's answers for `run`, or None when it failed as a whole."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        out, _ = proc.communicate(json.dumps(run).encode("ascii"))
        answer = json.loads(out) if proc.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return answer if isinstance(answer, list) and len(answer) == len(run) else None


def _child() -> None:
    from loraprompt.library.entry import header_record  # the child's only heavy import
    from loraprompt.library.quickheader import Layouts

    paths = json.loads(sys.stdin.buffer.read())
    layouts = Layouts()
    out: list[Any] = []
    for path in paths:
        try:
            out.append(header_record(path, layouts))
        except FileReadError:  # an OSError, which may go away: the caller reads it again and does not cache it
            out.append(None)
        except AdapterFileError as exc:
            out.append({"error": exc.reason})
        except Exception:  # the caller reads this file itself and sees what it raises
            out.append(None)
    sys.stdout.buffer.write(json.dumps(out).encode("ascii"))


if __name__ == "__main__":
    _child()
