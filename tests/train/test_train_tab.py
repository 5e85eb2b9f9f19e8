"""The Train tab's job logic without a browser: what the worker reports and what the page shows."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from loraprompt.ui import train_tab


def test_stop_while_the_model_loads_shows_stopped_not_a_bare_keyboardinterrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import loraprompt.train as train_pkg

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # the Stop button's SIGINT while the worker still loads the model

    monkeypatch.setattr(train_pkg, "train", interrupted)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    events: queue.Queue[Any] = queue.Queue()
    train_tab._worker({"images": "x", "output": "x.safetensors"}, events)
    job = train_tab.TrainJob("mine", {"token": "<s1>"})
    while not events.empty():
        job._event(*events.get())
    assert job.status == "stopped"
    assert "KeyboardInterrupt" not in job.message and "nothing to resume" in job.message
