"""`loraprompt train` on the built-in demo model: the files it leaves, what it refuses, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from loraprompt.cli import main

from .conftest import write_images

DEMO = ["--checkpoint", "demo", "--steps", "2", "--resolution", "64", "--rank", "4", "--sample-steps", "1", "-q"]


def _metadata(path: Path) -> tuple[list[str], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys()), dict(f.metadata())


def test_demo_run_writes_kohya_lora_metadata_json_and_preview(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (images / "notes.md").write_text("not an image")
    out = tmp_path / "mine.safetensors"
    assert main(["train", str(images), "--output", str(out), *DEMO]) == 0
    captured = capsys.readouterr()
    assert "skipped broken.png:" in captured.err and "notes.md" not in captured.err
    assert f"wrote {out}" in captured.out

    keys, meta = _metadata(out)
    assert keys and all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert {k.rsplit(".", 1)[0].rsplit(".", 1)[-1] for k in keys} >= {"lora_down", "lora_up"}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "4.0")
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_num_train_images"] == "3" and meta["ss_steps"] == "2" and meta["ss_max_train_steps"] == "2"
    assert meta["ss_resolution"] == "(64, 64)" and meta["ss_output_name"] == "mine"
    assert float(meta["ss_training_finished_at"]) >= float(meta["ss_training_started_at"])
    tags = json.loads(meta["ss_tag_frequency"])["photos"]
    assert tags["red stripes"] == 1 and tags["a photo of <s1>"] == 3
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.title"] == "mine"

    doc = json.loads((tmp_path / "mine.json").read_text())
    assert doc["activation text"] == "<s1>" and doc["sd version"] == "SD1"
    assert doc["loraprompt_train"]["steps"] == 2 and doc["loraprompt_train"]["rank"] == 4
    with Image.open(tmp_path / "mine.preview.png") as preview:
        assert preview.size == (64, 64)
    assert not (tmp_path / "mine.train-state").exists()  # no --save-every: nothing left to resume

    before = out.read_bytes()
    assert main(["train", str(images), "--output", str(out), *DEMO]) == 1
    assert "output exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_no_usable_image_is_an_error_naming_the_files_and_writes_nothing(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (images / "b.png").write_bytes(b"")
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert main(["train", str(images), "--output", str(outdir / "x.safetensors"), *DEMO]) == 1
    err = capsys.readouterr().err
    assert "no usable image" in err and "a.jpg" in err and "b.png" in err
    assert list(outdir.iterdir()) == []


def test_bad_settings_are_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=1)
    assert main(["train", str(images), "--output", str(tmp_path / "x.ckpt"), *DEMO]) == 1
    assert ".safetensors" in capsys.readouterr().err
    assert main(["train", str(images), "--output", str(tmp_path / "x.safetensors"), *DEMO, "--rank", "0"]) == 1
    assert "--rank must be at least 1" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--output", str(tmp_path / "x.safetensors"), *DEMO]) == 1
    assert "IMAGES must be a folder" in capsys.readouterr().err
    assert list(tmp_path.glob("x.*")) == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--sample-steps", "0"], "--sample-steps must be at least 1"),
    # trained on captions without a trigger, and wrote an empty activation text to the card
    (["--token", ""], "--token '': the trigger word must not be empty"),
    (["--token", "  "], "--token '  ': the trigger word must not be empty"),
    (["--token", "", "--pivotal"], "--token '': the trigger word must not be empty"),
    (["--sample-every", "-2"], "--sample-every must be 0 or more"),
    (["--save-every", "-1"], "--save-every must be 0 or more"),
    (["--alpha", "0"], "--alpha must be > 0"),
    (["--device", "gpu"], "--device 'gpu'"),
    (["--resolution", "40"], "--resolution 40: this model needs at least"),
    (["--resolution", "100"], "--resolution 100: must be a multiple of 8 (96 or 104)"),  # failed at the preview, after training
    # trained every step, then the preview failed ('Input type (c10::Half) and bias type (float)'): no LoRA
    (["--device", "cpu", "--mixed-precision", "fp16"], "--mixed-precision fp16 needs a GPU"),
    (["--min-snr-gamma", "-1"], "--min-snr-gamma must be > 0"),  # trained on a negative loss
    (["--lr-token", "-1"], "--lr-token must be >= 0"),
    (["--lr", "inf"], "--lr must be a finite number"),  # a NaN loss at step 2
    (["--alpha", "inf"], "--alpha must be a finite number"),  # a NaN loss, and 'lower --lr'
    (["--noise-offset", "nan"], "--noise-offset must be a finite number"),
    (["--output-is-a-folder"], "is a folder"),
])
def test_settings_that_would_fail_later_are_refused_with_a_message(tmp_path: Path, flags: list[str], message: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=1)
    out = tmp_path / "x.safetensors"
    if flags == ["--output-is-a-folder"]:
        out.mkdir()
        flags = ["--force"]
    assert main(["train", str(images), "--output", str(out), *DEMO, *flags]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.glob("x.*")) == ([out] if out.is_dir() else [])


def test_resume_without_steps_finishes_the_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=2)
    first = tmp_path / "first.safetensors"
    flags = [f for f in DEMO if f not in ("--steps", "2")]
    assert main(["train", str(images), "--output", str(first), *flags, "--steps", "4", "--save-every", "2",
                 "--format", "peft"]) == 0
    state = tmp_path / "first.train-state"
    assert (state / "state.pt").is_file()
    capsys.readouterr()
    again = tmp_path / "again.safetensors"
    assert main(["train", "--resume", str(state), "--output", str(again), "-q"]) == 0  # as docs/train.md says
    assert f"wrote {again} (4 steps" in capsys.readouterr().out
    with safe_open(str(first), "pt") as a, safe_open(str(again), "pt") as b:
        assert all(a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys())
        assert all(k.startswith(("unet.", "text_encoder.")) for k in b.keys())  # still --format peft


@pytest.mark.parametrize("where", ["loading", "before the first step"])
def test_ctrl_c_before_any_step_says_there_is_nothing_to_resume(tmp_path: Path, where: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from loraprompt.train import trainer

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "load_base" if where == "loading" else "add_lora", interrupt)
    images = write_images(tmp_path / "photos", count=1)
    assert main(["train", str(images), "--output", str(tmp_path / "x.safetensors"), *DEMO]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "nothing to resume" in err
    assert "Traceback" not in err and "--resume None" not in err
    assert list(tmp_path.glob("x*")) == []


def test_sigterm_while_the_model_loads_ends_cleanly_with_143(tmp_path: Path) -> None:
    """SIGTERM (a container stopping, `kill`, a scheduler's limit) was handled only once training ran:
    arriving while torch, the model or the images loaded, it killed the process without a word (exit
    -15). A real process: it signals itself when the demo model's loading first imports diffusers
    (an audit hook, which observes and patches nothing), in Trainer.__init__, before run()."""
    import os
    import subprocess
    import sys

    images = write_images(tmp_path / "photos", count=1)
    out = tmp_path / "x.safetensors"
    script = (
        "import os, signal, sys\n"
        "sent = []\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0] == 'diffusers' and not sent:\n"
        "        sent.append(1)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.addaudithook(hook)\n"
        "from loraprompt.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    root = str(Path(__file__).resolve().parents[2])  # this checkout's loraprompt, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", script, "train", str(images), "--output", str(out), *DEMO],
                          check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 143, (done.returncode, done.stderr[-2000:])  # 128 + SIGTERM, as for a run
    assert "loraprompt train: interrupted by SIGTERM before training started; nothing to resume" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no LoRA, card, preview or state


def test_peft_output_loads_in_diffusers_from_its_file_as_loraprompt_applies_it(tmp_path: Path) -> None:
    import torch

    import loraprompt
    from loraprompt.models.demo import build_demo_pipeline

    images = write_images(tmp_path / "photos", count=2)
    out = tmp_path / "p.safetensors"
    assert main(["train", str(images), "--output", str(out), *DEMO, "--format", "peft", "--alpha", "2",
                 "--lr", "1e-2", "--lr-te", "1e-2"]) == 0
    ours, theirs = build_demo_pipeline(), build_demo_pipeline()
    components = {"unet": ours.unet, "text_encoder": ours.text_encoder}
    loraprompt.Patcher(components).sync([(loraprompt.read_adapter(out), 1.0, 1.0)])
    # from the file, so diffusers reads r, lora_alpha and target_modules from its metadata
    theirs.load_lora_weights(str(tmp_path), weight_name=out.name)
    theirs.fuse_lora(lora_scale=1.0)
    for name, module in components.items():
        other = {k.replace(".base_layer", ""): v for k, v in getattr(theirs, name).state_dict().items()
                 if "lora_" not in k}
        for key, value in module.state_dict().items():
            assert torch.allclose(value, other[key], atol=1e-5), (name, key)


def test_checkpoint_is_required_as_the_usage_says(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=1)
    flags = [f for f in DEMO if f not in ("--checkpoint", "demo")]
    assert main(["train", str(images), "--output", str(tmp_path / "x.safetensors"), *flags]) == 1
    assert "--checkpoint is required" in capsys.readouterr().err  # not 500 steps on the tiny demo model
    assert list(tmp_path.glob("x*")) == []


def test_samples_survive_a_successful_run(tmp_path: Path) -> None:
    images = write_images(tmp_path / "photos", count=2)
    flags = [f for f in DEMO if f not in ("--steps", "2")]
    out = tmp_path / "s.safetensors"
    assert main(["train", str(images), "--output", str(out), *flags, "--steps", "4", "--sample-every", "2"]) == 0
    sample = tmp_path / "s.train-state" / "samples" / "step-000002.png"
    assert sample.is_file()  # asked for, and named as it was written: it must still be there
    assert not (tmp_path / "s.train-state" / "state.pt").exists()  # the resumable state is gone


def test_a_bad_device_is_refused_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from loraprompt.train import trainer

    def slow_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded (minutes for SDXL) before --device was checked")

    monkeypatch.setattr(trainer, "load_base", slow_load)
    images = write_images(tmp_path / "photos", count=1)
    assert main(["train", str(images), "--output", str(tmp_path / "x.safetensors"), *DEMO, "--device", "gpu"]) == 1
    assert "--device 'gpu'" in capsys.readouterr().err


def test_a_card_json_or_preview_of_that_name_is_not_replaced_without_force(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A run writes <stem>.json and <stem>.preview.png beside the LoRA: a user's card metadata of that
    name (e.g. left by a LoRA they deleted) is an output that exists, like the LoRA file."""
    images = write_images(tmp_path / "photos", count=1)
    out = tmp_path / "card.safetensors"
    notes = tmp_path / "card.json"
    notes.write_text('{"notes": "my settings for the old card"}')
    assert main(["train", str(images), "--output", str(out), *DEMO]) == 1
    assert f"{notes}: output exists; pass --force" in capsys.readouterr().err
    assert notes.read_text() == '{"notes": "my settings for the old card"}' and not out.exists()
    assert main(["train", str(images), "--output", str(out), *DEMO, "--force"]) == 0
    assert out.is_file() and json.loads(notes.read_text())["activation text"] == "<s1>"


def test_a_run_with_its_output_in_the_image_folder_does_not_train_on_its_own_preview_or_samples(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loraprompt.train.data import load_dataset

    images = write_images(tmp_path / "photos", count=2)
    out = images / "me.safetensors"  # the artist keeps the LoRA with its photos
    assert main(["train", str(images), "--output", str(out), *DEMO, "--sample-every", "1", "--save-every", "1"]) == 0
    assert (images / "me.preview.png").is_file() and (images / "me.train-state" / "samples").is_dir()
    data = load_dataset(images, resolution=64, step=8, template="{token}", token="<s1>", require_token=False)
    assert sorted(item.name for item in data.images) == ["img0.png", "img1.png"]  # what the next run (--force) trains on
    assert {name for name, _ in data.skipped} == {"me.preview.png", "me.train-state/samples/step-000001.png"}


def test_resume_refuses_a_recipe_option_given_again_with_another_value(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=1)
    first = tmp_path / "first.safetensors"
    assert main(["train", str(images), "--output", str(first), *DEMO, "--save-every", "1"]) == 0
    state = tmp_path / "first.train-state"
    capsys.readouterr()
    again = tmp_path / "again.safetensors"
    # the user believes this resumes at rank 8 with a higher lr; the saved run is rank 4, lr 1e-4
    assert main(["train", "--resume", str(state), "--output", str(again), "-q", "--rank", "8", "--lr", "0.01",
                 "--seed", "0"]) == 1
    err = capsys.readouterr().err
    assert "--rank 8" in err and "--lr 0.01" in err and "--seed" not in err and "rank 4" in err
    assert not again.exists()
    assert main(["train", "--resume", str(state), "--output", str(again), "-q", "--rank", "4"]) == 0  # the same value is fine


def test_resume_tells_an_option_given_as_its_default_from_one_left_out(tmp_path: Path) -> None:
    """`--resume` restored the saved value of every recipe option left at its default, so one given
    as its default value (`--rank 16` on a rank-4 run, `--lr 1e-4` on a 1e-3 run) was dropped without
    a word, while any other value was refused. Options given are now known as such. No training: a
    saved state holds the run's settings, which is all this reads."""
    import argparse

    import torch

    from loraprompt.train import TrainConfig, TrainError
    from loraprompt.train.cli import add_arguments, config_from_args
    from loraprompt.train.state import STATE_FILE, STATE_VERSION

    images = write_images(tmp_path / "photos", count=1)
    state = tmp_path / "run.train-state"
    state.mkdir()
    saved = TrainConfig(images=str(images), output=str(tmp_path / "run.safetensors"), checkpoint="demo", rank=4,
                        lr=1e-3, train_te=False, seed=3, steps=8)
    torch.save({"version": STATE_VERSION, "config": saved.to_dict()}, state / STATE_FILE)

    def config(*flags: str) -> TrainConfig:
        parser = argparse.ArgumentParser()
        add_arguments(parser, "train")
        return config_from_args(parser.parse_args([*flags, "--output", str(tmp_path / "again.safetensors")]))

    for flags, named in ((["--rank", "16"], "--rank 16"), (["--lr", "1e-4"], "--lr 0.0001"),
                         (["--train-te"], "--train-te"), (["--seed", "0"], "--seed 0")):  # each its default
        with pytest.raises(TrainError, match=f"{named} would change what it learns"):
            config("--resume", str(state), *flags)
    resumed = config("--resume", str(state), "--rank", "4", "--no-train-te")  # the saved values are fine
    assert (resumed.rank, resumed.lr, resumed.train_te, resumed.seed, resumed.steps) == (4, 1e-3, False, 3, 8)
    assert resumed.recipe() == saved.recipe()  # what is left out is the saved run's
    # without --resume, options left out are TrainConfig's defaults, as the usage says
    fresh = config(str(images), "--checkpoint", "demo")
    assert fresh == TrainConfig(images=str(images), output=str(tmp_path / "again.safetensors"), checkpoint="demo")


def test_tag_frequency_is_keyed_by_the_whole_folder_name(tmp_path: Path) -> None:
    images = write_images(tmp_path / "10_cat.v2", count=1)  # a dot in a folder name is not a suffix
    out = tmp_path / "cat.safetensors"
    assert main(["train", str(images) + "/", "--output", str(out), *DEMO]) == 0
    _, meta = _metadata(out)
    assert list(json.loads(meta["ss_tag_frequency"])) == ["10_cat.v2"]
    assert list(json.loads(meta["ss_dataset_dirs"])) == ["10_cat.v2"]


def test_kohya_repeat_folders_are_in_the_metadata_as_sd_scripts_writes_them(tmp_path: Path) -> None:
    root = tmp_path / "img"
    write_images(root / "4_cat", count=2)
    write_images(root / "1_dog", count=1, seed=1)
    out = tmp_path / "pets.safetensors"
    assert main(["train", str(root), "--output", str(out), *DEMO]) == 0
    _, meta = _metadata(out)
    assert json.loads(meta["ss_dataset_dirs"]) == {"4_cat": {"n_repeats": 4, "img_count": 2},
                                                   "1_dog": {"n_repeats": 1, "img_count": 1}}
    assert meta["ss_num_train_images"] == "9"  # sd-scripts counts each repeat
    assert set(json.loads(meta["ss_tag_frequency"])) == {"4_cat", "1_dog"}

def test_resume_from_another_folder_finds_the_images_given_as_a_relative_path(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path / "photos", count=1)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "photos", "--output", "me.safetensors", *DEMO, "--save-every", "1"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a new terminal: the saved run must not depend on the old one's folder
    again = tmp_path / "again.safetensors"
    assert main(["train", "--resume", str(tmp_path / "me.train-state"), "--output", str(again), "-q",
                 "--steps", "3"]) == 0, capsys.readouterr().err
    assert again.is_file()


def test_a_nan_loss_does_not_send_the_user_to_a_resume_that_fails_the_same_way(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=1)
    out = tmp_path / "x.safetensors"
    assert main(["train", str(images), "--output", str(out), *DEMO, "--steps", "3", "--lr", "1e30"]) == 1
    err = capsys.readouterr().err
    assert "the loss became nan at step 2" in err and "lower --lr" in err and not out.exists()
    # the advice must work: a resume keeps the saved lr (it is part of the recipe) and stops at step 2 again
    assert "--resume" not in err.replace("without --resume", "")


def test_a_zip_without_usable_images_is_named_in_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import zipfile

    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos/a.txt", "a caption without its image")
        zf.writestr("photos/b.png", b"\x89PNG\r\n\x1a\n truncated")
    assert main(["train", str(archive), "--output", str(tmp_path / "x.safetensors"), *DEMO]) == 1
    err = capsys.readouterr().err
    assert f"{archive}: no usable image (photos/b.png:" in err  # not the deleted temporary folder it was unpacked to
    assert "loraprompt-train-" not in err


def test_an_image_enlarged_to_its_bucket_is_named_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_images(tmp_path / "photos", count=1, size=(64, 64))
    Image.new("RGB", (16, 16), "red").save(images / "tiny.png")
    assert main(["train", str(images), "--output", str(tmp_path / "t.safetensors"), *DEMO]) == 0
    assert "warning: tiny.png: 16x16 is upscaled 4.0x to 64x64" in capsys.readouterr().err
