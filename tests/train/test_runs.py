"""Runs through the Python API on the tiny SD1 pipeline: resume equals an uninterrupted run, Ctrl-C
and crashes leave a resumable state and nothing at the output, zips are checked, OOM names settings."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loraprompt.train import TrainConfig, TrainError, TrainInterrupted, train
from loraprompt.train.data import extract_zip

from .conftest import sd1_base, write_images


def _config(images: Path, out: Path, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = {"images": str(images), "output": str(out), "steps": 6, "rank": 2, "lr": 1e-3,
                              "resolution": 32, "sample_steps": 1, "batch_size": 2, "task": "style", "seed": 7}
    return TrainConfig(**{**values, **kw})


def _stop_at(step: int, exc: BaseException) -> Any:
    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "step" and data["step"] == step:
            raise exc

    return on_event


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), RuntimeError("disk on fire")], ids=["ctrl-c", "crash"])
def test_interrupted_run_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path, images: Path,
                                                                     failure: BaseException) -> None:
    whole = train(_config(images, tmp_path / "whole.safetensors"), base=sd1_base(tmp_path / "a"))

    out = tmp_path / "split.safetensors"
    with pytest.raises(TrainInterrupted) as info:
        train(_config(images, out), base=sd1_base(tmp_path / "b"), on_event=_stop_at(3, failure))
    assert info.value.step == 3 and Path(info.value.state_dir) == tmp_path / "split.train-state"
    assert "--resume" in str(info.value)
    assert not out.exists() and not out.with_suffix(".json").exists()

    resumed = train(_config(images, out, resume=info.value.state_dir), base=sd1_base(tmp_path / "c"))
    assert resumed.losses == whole.losses  # the history, and every step after the resume
    a, b = load_file(str(whole.output)), load_file(str(out))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "x.safetensors"
    with pytest.raises(TrainInterrupted) as info:
        train(_config(images, out), base=sd1_base(tmp_path / "a"), on_event=_stop_at(2, KeyboardInterrupt()))
    with pytest.raises(TrainError, match="rank"):
        train(_config(images, out, rank=4, resume=info.value.state_dir), base=sd1_base(tmp_path / "b"))


def test_resume_after_the_images_changed_is_refused_naming_them(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "x.safetensors"
    with pytest.raises(TrainInterrupted) as info:
        train(_config(images, out), base=sd1_base(tmp_path / "a"), on_event=_stop_at(2, KeyboardInterrupt()))
    (images / "img2.png").unlink()
    write_images(tmp_path / "more", count=1)
    (tmp_path / "more" / "img0.png").rename(images / "new.png")
    (images / "img1.txt").write_text("a new caption")
    with pytest.raises(TrainError) as refused:  # it would not be the run it claims to continue
        train(_config(images, out, resume=info.value.state_dir), base=sd1_base(tmp_path / "b"))
    message = str(refused.value)
    assert "added new.png" in message and "removed img2.png" in message and "new caption for img1.png" in message
    assert not out.exists()


def test_out_of_memory_names_the_settings_to_lower(tmp_path: Path, images: Path) -> None:
    base = sd1_base(tmp_path / "a")

    def allocate_too_much(module: Any, args: Any) -> None:  # a real allocator failure, mid-step
        torch.empty(1 << 60, dtype=torch.uint8)

    base.pipe.unet.register_forward_pre_hook(allocate_too_much)
    out = tmp_path / "x.safetensors"
    with pytest.raises(TrainError) as info:
        train(_config(images, out, batch_size=2), base=base)
    message = str(info.value)
    assert message.startswith("out of memory")
    for setting in ("--batch-size (now 2)", "--resolution (now 32)", "--gradient-checkpointing", "--mixed-precision"):
        assert setting in message
    assert not out.exists()


def _zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def test_zip_trains_and_ignores_non_images(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "src", count=2)
    entries = {f"set/{p.name}": p.read_bytes() for p in folder.iterdir()}
    entries["set/readme.pdf"] = b"%PDF"
    entries["__MACOSX/set/._img0.png"] = b"junk"
    archive = _zip(tmp_path / "set.zip", entries)
    result = train(_config(archive, tmp_path / "z.safetensors", steps=1), base=sd1_base(tmp_path / "a"))
    assert result.output.exists() and result.skipped == []
    assert load_file(str(result.output))


@pytest.mark.parametrize(("entry", "why"), [("../evil.png", "escapes the folder"), ("/abs/evil.png", "absolute"),
                                            ("C:\\evil.png", "absolute"), ("ok/..\\..\\evil.png", "escapes")])
def test_zip_entries_escaping_the_folder_are_refused(tmp_path: Path, entry: str, why: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"fine.png": b"x", entry: b"x"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(TrainError, match=why) as info:
        extract_zip(archive, dest)
    assert repr(entry) in str(info.value)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil.png").exists()


def test_zip_symlinks_and_size_cap_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(TrainError, match=r"'link\.png' is a symbolic link"):
        extract_zip(_zip(tmp_path / "link.zip", {"a.png": b"x"}, symlink="link.png"), dest)
    big = _zip(tmp_path / "big.zip", {"a.png": b"\0" * 4000, "b.png": b"\0" * 4000})
    with pytest.raises(TrainError, match="zip size cap"):
        extract_zip(big, dest, max_bytes=6000)
    assert list(dest.iterdir()) == []
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK not a zip")
    with pytest.raises(TrainError, match=r"fake\.zip: not a readable zip"):
        extract_zip(fake, dest)


def test_v_prediction_min_snr_offset_noise_bf16_and_checkpointing_train(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "v.safetensors"
    result = train(_config(images, out, steps=2, prediction_type="v_prediction", min_snr_gamma=5.0, noise_offset=0.05,
                           mixed_precision="bf16", gradient_checkpointing=True), base=sd1_base(tmp_path / "a"))
    assert len(result.losses) == 2 and all(0 < x < 100 for x in result.losses)
    meta = load_file(str(out))
    assert all(torch.isfinite(t.float()).all() for t in meta.values())
    with safe_open(str(out), "pt") as f:
        md = f.metadata()
    assert md["modelspec.prediction_type"] == "v" and md["ss_min_snr_gamma"] == "5.0"
    assert md["ss_mixed_precision"] == "bf16" and md["ss_noise_offset"] == "0.05"


def test_a_nan_loss_leaves_the_state_of_the_last_finished_step(tmp_path: Path, images: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from loraprompt.train import trainer

    real = trainer.Trainer.loss_at

    def nan_at_third(self: Any, step: int) -> torch.Tensor:
        loss = real(self, step)
        return loss * float("nan") if step == 2 else loss

    out = tmp_path / "x.safetensors"
    with pytest.raises(TrainInterrupted) as first:  # the state after 2 steps, as the uninterrupted run has it
        train(_config(images, out), base=sd1_base(tmp_path / "a"), on_event=_stop_at(2, KeyboardInterrupt()))
    good = torch.load(Path(first.value.state_dir) / "state.pt", weights_only=True)
    monkeypatch.setattr(trainer.Trainer, "loss_at", nan_at_third)
    with pytest.raises(TrainError, match="loss became nan at step 3"):
        train(_config(images, out, force=True), base=sd1_base(tmp_path / "b"))
    state = torch.load(Path(first.value.state_dir) / "state.pt", weights_only=True)
    assert state["step"] == 2 and not out.exists()
    for name, tensors in state["params"].items():  # not the NaN update of the failed step
        assert all(torch.equal(t, good["params"][name][k]) for k, t in tensors.items())


def test_an_output_that_appears_during_training_is_kept_and_the_run_can_be_resumed(tmp_path: Path,
                                                                                  images: Path) -> None:
    out = tmp_path / "x.safetensors"

    def someone_writes_it(kind: str, data: dict[str, Any]) -> None:
        if kind == "step" and data["step"] == 2:
            out.write_bytes(b"theirs")

    with pytest.raises(TrainError) as info:
        train(_config(images, out), base=sd1_base(tmp_path / "a"), on_event=someone_writes_it)
    assert "output exists" in str(info.value) and f"--resume {tmp_path / 'x.train-state'}" in str(info.value)
    assert out.read_bytes() == b"theirs"
    resumed = train(_config(images, tmp_path / "y.safetensors", resume=str(tmp_path / "x.train-state")),
                    base=sd1_base(tmp_path / "b"))
    assert resumed.steps == 6


@pytest.mark.parametrize("failure", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                     KeyboardInterrupt()], ids=["oom", "ctrl-c"])
def test_a_failed_final_preview_keeps_the_trained_lora(tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch,
                                                       failure: BaseException) -> None:
    """The preview is sampled after the last step, with the optimizer's memory still held: running
    out of memory there (or Ctrl-C) threw away the whole run, with the LoRA not yet written."""
    from loraprompt.train.trainer import Trainer

    out = tmp_path / "kept.safetensors"
    stale = out.with_name("kept.preview.png")
    stale.write_bytes(b"the preview of an older LoRA of this name")  # replaced with force=True

    def failing_sample(self: Any, prompt: str | None = None) -> Any:
        raise failure

    monkeypatch.setattr(Trainer, "sample", failing_sample)
    events: list[tuple[str, dict[str, Any]]] = []
    result = train(_config(images, out, force=True, sample_every=0), base=sd1_base(tmp_path / "a"),
                   on_event=lambda kind, data: events.append((kind, data)))
    assert result.steps == 6 and result.preview_path is None
    with safe_open(str(out), "pt") as f:
        assert any(k.endswith("lora_down.weight") for k in f.keys()) and f.metadata()["ss_steps"] == "6"
    assert out.with_suffix(".json").is_file()
    assert not stale.exists()  # not the older LoRA's picture beside the new file
    assert not (tmp_path / "kept.train-state").exists()  # done: nothing to resume
    expected = "out of memory" if isinstance(failure, torch.OutOfMemoryError) else "interrupted"
    assert result.preview_error is not None and expected in result.preview_error
    done = [data for kind, data in events if kind == "done"]
    assert done and done[0]["preview_error"] == result.preview_error


def test_sigterm_stops_a_run_with_a_resumable_state_as_ctrl_c_does(tmp_path: Path, images: Path) -> None:
    """SIGTERM is how a container stops, `kill` ends a job and a scheduler's time limit hits: it
    killed the run outright, losing every step. It now saves the state, as Ctrl-C does."""
    import os
    import signal

    out = tmp_path / "termed.safetensors"
    before = signal.getsignal(signal.SIGTERM)

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "step" and data["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainInterrupted) as info:
        train(_config(images, out), base=sd1_base(tmp_path / "a"), on_event=on_event)
    assert info.value.step == 3 and "SIGTERM" in str(info.value) and "--resume" in str(info.value)
    assert (Path(info.value.state_dir) / "state.pt").is_file() and not out.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the process's own handler is back afterwards
    resumed = train(_config(images, out, resume=info.value.state_dir), base=sd1_base(tmp_path / "b"))
    assert resumed.steps == 6 and out.is_file()


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path: Path, images: Path) -> None:
    """Found only when the LoRA was written, after the whole run (and its state could not be saved
    there either). /proc/self is a folder nobody, root included, can create files in."""
    with pytest.raises(TrainError, match=r"--output /proc/self/x\.safetensors: cannot write in /proc/self"):
        train(_config(images, Path("/proc/self/x.safetensors")), base=sd1_base(tmp_path / "a"),
              on_event=lambda kind, data: pytest.fail(f"a {kind} event: the run started"))


def test_a_second_ctrl_c_while_the_state_is_saved_does_not_lose_it(tmp_path: Path, images: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C pressed again (or a SIGTERM after it) while the interrupted run saved its state broke
    the save off: no state, and the CLI said 'interrupted before training started; nothing to resume'."""
    import os
    import signal

    from loraprompt.train import read_state

    real_save = torch.save

    def save_while_pressed_again(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f, *args, **kwargs)

    handler = signal.getsignal(signal.SIGINT)  # pytest's; an xdist worker ignores SIGINT
    monkeypatch.setattr(torch, "save", save_while_pressed_again)
    out = tmp_path / "twice.safetensors"
    with pytest.raises(TrainInterrupted) as info:
        train(_config(images, out), base=sd1_base(tmp_path / "a"), on_event=_stop_at(3, KeyboardInterrupt()))
    assert info.value.step == 3 and "resume with --resume" in str(info.value)
    assert read_state(info.value.state_dir)["step"] == 3
    assert signal.getsignal(signal.SIGINT) == handler  # the process's own handler is back
