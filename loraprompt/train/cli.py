"""`loraprompt train IMAGES --checkpoint PATH|demo --output FILE.safetensors [...]`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from loraprompt.train.config import FORMATS, PRECISIONS, TASKS, TrainConfig


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The recipe's options (config.RECIPE_FIELDS), --steps and --format default to None, "not given":
    `config_from_args` fills in the saved run's value with --resume, else TrainConfig's default, so
    an option given as its default value is told apart from one left out."""
    parser.add_argument("images", nargs="?", metavar="IMAGES",
                        help="a folder of images (captions in <image>.txt beside them) or a .zip of them")
    parser.add_argument("--checkpoint", default=None,
                        help="the base model: a .safetensors checkpoint, a diffusers folder, or 'demo' (the built-in"
                             " tiny model, to try the tool); required unless --resume")
    parser.add_argument("--output", "-o", required=True, help="the LoRA file to write (.safetensors)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 500; with --resume, the saved run's)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--lr", type=float, default=None, help="UNet learning rate (default 1e-4)")
    parser.add_argument("--lr-te", type=float, default=None, help="text encoder learning rate (default 5e-5)")
    parser.add_argument("--lr-token", type=float, default=None, help="pivotal token learning rate (default 5e-4)")
    parser.add_argument("--train-te", action=argparse.BooleanOptionalAction, default=None,
                        help="also train LoRA layers on the text encoder(s)")
    parser.add_argument("--ff", action="store_true", default=None, help="also train the UNet's feed-forward layers")
    parser.add_argument("--resolution", type=int, default=None, help="training side in pixels (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default=None, help="(default no: float32)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--task", choices=TASKS, default=None, help="sets the caption template, flips and init word (default object)")
    parser.add_argument("--token", default=None, help="the trigger word (the activation text)")
    parser.add_argument("--init-word", default=None, help="word the pivotal token's embedding starts from")
    parser.add_argument("--pivotal", action="store_true", default=None, help="learn the token's embedding (bundled in the file)")
    parser.add_argument("--caption-template", default=None, help="caption for images without .txt (and outside kohya N_caption folders,"
                             " which caption them); {token} is replaced")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    parser.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR loss weighting (default off; 5 is usual)")
    parser.add_argument("--noise-offset", type=float, default=None, help="offset noise (default 0)")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                        help="(default: the checkpoint's scheduler config)")
    parser.add_argument("--sample-every", type=int, default=0, help="save a sample image every N steps")
    parser.add_argument("--sample-prompt", default=None, help="(default: the caption template)")
    parser.add_argument("--sample-steps", type=int, default=20, help="sampling steps of samples and the preview (default 20)")
    parser.add_argument("--save-every", type=int, default=0, help="save a resumable state every N steps")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the run saved in DIR, with its recipe (options left out take its values)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="kohya (A1111, ComfyUI, diffusers) or peft (default kohya; with --resume, the saved run's)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from loraprompt.train.config import RECIPE_FIELDS
    from loraprompt.train.errors import TrainError
    from loraprompt.train.state import read_state

    # absolute, so the saved state resumes from any folder (a new terminal, another working directory)
    for key in ("images", "checkpoint"):
        value = getattr(args, key)
        if value and value != "demo" and os.path.exists(value):
            setattr(args, key, os.path.abspath(value))
    values = {k: v for k, v in vars(args).items() if k not in ("command", "quiet")}
    saved = read_state(args.resume)["config"] if args.resume else {}
    _refuse_changed_recipe(args, saved)
    # an option left out (None: no option can be given None) takes the saved run's value, so
    # `--resume DIR --output F` is enough and `--steps` extends a finished or interrupted run; with
    # no saved value, TrainConfig's default. A recipe option given again has the saved value (or was refused).
    for key in (*RECIPE_FIELDS, "steps", "format"):
        if values[key] is None and key != "checkpoint":
            values[key] = saved.get(key, TrainConfig.__dataclass_fields__[key].default)
    values["checkpoint"] = values["checkpoint"] or saved.get("checkpoint")
    values["images"] = values["images"] or saved.get("images")
    if not values.get("checkpoint"):
        raise TrainError("--checkpoint is required: a .safetensors checkpoint, a diffusers folder, or 'demo'"
                         " (the built-in tiny model, to try the tool)")
    if not values.get("images"):
        raise TrainError("IMAGES is required: a folder or a .zip of training images")
    return TrainConfig.from_dict(values)


def _refuse_changed_recipe(args: argparse.Namespace, saved: dict[str, object]) -> None:
    """A recipe option given again with `--resume` and another value than the saved run's, its
    default value included, would be replaced by the saved value without a word: refuse it."""
    from loraprompt.train.config import RECIPE_FIELDS
    from loraprompt.train.errors import TrainError

    changed = [k for k in RECIPE_FIELDS if k in saved and getattr(args, k) is not None and getattr(args, k) != saved[k]]
    if changed:
        given = ", ".join(_option(k, getattr(args, k)) for k in changed)
        used = ", ".join(f"{k.replace('_', ' ')} {saved[k]}" for k in changed)
        raise TrainError(f"--resume {args.resume}: the saved run used {used}; {given} would change what it learns."
                         " Leave them out to continue it, or start a new run without --resume")


def _option(key: str, value: object) -> str:
    """An option as it was given: `--rank 8`, `--no-train-te`, `--ff`."""
    name = key.replace("_", "-")
    return f"--{'' if value else 'no-'}{name}" if isinstance(value, bool) else f"--{name} {value}"


def run(args: argparse.Namespace) -> int:
    from loraprompt.train.errors import TrainError, TrainInterrupted, sigterm_interrupts

    def event(kind: str, data: dict[str, Any]) -> None:
        if kind == "skipped":
            print(f"skipped {data['file']}: {data['reason']}", file=sys.stderr)
        elif kind == "warning":
            print(f"warning: {data['file']}: {data['reason']}", file=sys.stderr)
        elif kind == "sample" and not args.quiet:
            print(f"\nsample at step {data['step']}: {data['path']}", file=sys.stderr)
        elif kind == "step" and not args.quiet:
            progress_bar(data["step"], data["steps"], data["loss"], data["steps_per_s"], data["eta_s"])

    try:
        # SIGTERM (a container stopping, `kill`) ends as Ctrl-C does from the start, not only once
        # training runs: its default kills the process without a word while torch or the model loads
        with sigterm_interrupts():
            from loraprompt.train.trainer import train

            config = config_from_args(args)
            result = train(config, on_event=event)
    except KeyboardInterrupt as exc:  # while the model or the images load: nothing trained, nothing written
        by = " by SIGTERM" if exc.args == ("SIGTERM",) else ""
        print(f"\nloraprompt train: interrupted{by} before training started; nothing to resume", file=sys.stderr)
        return 143 if by else 130  # 128 + the signal, as a shell reports it
    except TrainInterrupted as exc:
        print(f"\nloraprompt train: {exc}", file=sys.stderr)
        return 143 if "by SIGTERM" in str(exc) else 130 if "interrupted" in str(exc) else 1  # 128 + the signal
    except TrainError as exc:
        print(f"loraprompt train: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.output} ({result.steps} steps, {result.seconds:.1f} s, final loss"
          f" {result.losses[-1]:.4f}); {result.json_path.name}, "
          f"{result.preview_path.name if result.preview_path else 'no preview'}")
    if result.preview_error:
        print(f"loraprompt train: {result.preview_error}", file=sys.stderr)
    return 0


def progress_bar(step: int, total: int, loss: float, rate: float, eta: float) -> None:
    """One line on stderr, redrawn each step; the last step ends it."""
    width = 25
    done = width * step // max(total, 1)
    sys.stderr.write(f"\rtrain [{'#' * done:<{width}}] {step}/{total} loss {loss:.4f} {rate:.2f} steps/s"
                     f" ETA {int(eta) // 60}:{int(eta) % 60:02d} ")
    if step >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
