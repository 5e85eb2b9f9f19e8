"""The Train tab's job logic without a browser: what the worker reports and what the page shows."""

from __future__ import annotations

import queue
from pathlib import Path
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


def test_zero_or_empty_numbers_are_not_silently_replaced() -> None:
    knobs = train_tab.form_knobs(("object", "<s1>", False, 0, 0, 0, 0, True, None, False))
    assert (knobs["steps"], knobs["rank"], knobs["lr"]) == (0, 0, 0.0)  # TrainConfig refuses them by name
    assert knobs["resolution"] is None and knobs["sample_every"] == 0
    empty = train_tab.form_knobs(("object", " ", False, None, None, None, None, True, None, False))
    assert (empty["steps"], empty["rank"], empty["lr"], empty["token"]) == (500, 16, 1e-4, "<s1>")


def test_a_zip_dropped_with_other_files_is_refused(tmp_path: Path) -> None:
    from loraprompt.train import TrainError

    (tmp_path / "set.zip").write_bytes(b"PK")
    (tmp_path / "a.png").write_bytes(b"x")
    jobs = train_tab.TrainJobs(tmp_path / "lora", tmp_path / "work", "demo")
    with pytest.raises(TrainError, match=r"set\.zip"):
        jobs._images(tmp_path / "work" / "job", [str(tmp_path / "a.png"), str(tmp_path / "set.zip")], "")


class _Process:
    pid, exitcode = 12345, None
    alive = True

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        pass


def test_stop_before_the_worker_started_training_shows_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(train_tab.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    job = train_tab.TrainJob("mine", {"token": "<s1>"})
    job.process, job.events = _Process(), queue.Queue()  # type: ignore[assignment]
    job.stop()
    assert sent == [(12345, signal.SIGINT)]
    job.process.alive, job.process.exitcode = False, -signal.SIGINT  # killed while importing torch: no event
    job.poll()
    assert job.status == "stopped" and "nothing to resume" in job.message


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("[::1]", True), ("127.0.0.2", True), ("0.0.0.0", False),
                                                ("192.168.1.5", False), ("::", False), ("myhost.lan", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    from loraprompt.hosts import is_loopback

    assert is_loopback(host) is loopback


def test_served_beyond_loopback_no_folder_on_the_server_is_read(tmp_path: Path) -> None:
    """Robustness rule 23: a visitor of a web UI served on the network must not make it read a folder
    (or .zip) of the server's disk; dropped files still work, and on loopback the folder does."""
    import gradio as gr

    from loraprompt.train import TrainError

    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "a.png").write_bytes(b"x")
    (tmp_path / "up.png").write_bytes(b"x")
    remote = train_tab.TrainJobs(tmp_path / "lora", tmp_path / "work", "demo", local_paths=False)
    with pytest.raises(TrainError, match="beyond loopback"):
        remote._images(tmp_path / "work" / "job", [], str(secret))
    copied = remote._images(tmp_path / "work" / "job", [str(tmp_path / "up.png")], "")
    assert [p.name for p in copied.iterdir()] == ["up.png"]
    local = train_tab.TrainJobs(tmp_path / "lora", tmp_path / "work", "demo")
    assert local._images(tmp_path / "work" / "job", [], str(secret)) == secret

    def folder_visible(jobs: train_tab.TrainJobs) -> bool:
        with gr.Blocks() as blocks:
            train_tab.build_train_tab(jobs)
        (props,) = [c["props"] for c in blocks.get_config_file()["components"]
                    if c.get("props", {}).get("elem_id") == "lp-train-folder"]
        return bool(props.get("visible", True))

    assert folder_visible(local) and not folder_visible(remote)


def test_two_dropped_files_of_one_name_are_refused_not_overwritten(tmp_path: Path) -> None:
    """Images dragged from two folders may share a name (IMG_0001.jpg): the second copy replaced
    the first, so the run trained on fewer images than were dropped, without a word."""
    from loraprompt.train import TrainError

    for folder, colour in (("phone", b"a"), ("camera", b"b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "IMG_0001.jpg").write_bytes(colour)
    jobs = train_tab.TrainJobs(tmp_path / "lora", tmp_path / "work", "demo")
    with pytest.raises(TrainError, match=r"IMG_0001\.jpg: two dropped files"):
        jobs._images(tmp_path / "work" / "job", [str(tmp_path / "phone" / "IMG_0001.jpg"),
                                                 str(tmp_path / "camera" / "IMG_0001.jpg")], "")
    copied = jobs._images(tmp_path / "work" / "job", [str(tmp_path / "phone" / "IMG_0001.jpg")], "")
    assert (copied / "IMG_0001.jpg").read_bytes() == b"a"


def test_a_run_done_without_its_preview_says_so_on_the_page() -> None:
    job = train_tab.TrainJob("mine", {"token": "<s1>"})
    job._event("done", {"output": "/x/mine.safetensors", "steps": 4, "seconds": 1.0,
                        "preview_error": "the preview was not made (out of memory); the LoRA is saved"})
    assert job.status == "done" and "out of memory" in job.summary() and "<lora:mine:1>" in job.summary()


def test_images_that_train_blurry_are_named_on_the_page() -> None:
    job = train_tab.TrainJob("mine", {"token": "<s1>"})
    job._event("warning", {"file": "thumb.png", "reason": "24x24 is upscaled 2.7x to 64x64: the LoRA learns its blur"})
    assert "warning: thumb.png: 24x24 is upscaled 2.7x" in job.summary() and "skipped" not in job.summary()
