"""`loraprompt webui`: launch the standalone web UI on loopback (the built-in demo model unless
`--checkpoint` names a local SD1.x/SD2.x/SDXL checkpoint, or an SD3/Flux.1 diffusers folder)."""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser, command_name: str) -> None:
    """Options of `loraprompt webui`."""
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="single-file SD1/SD2/SDXL .safetensors checkpoint, or a diffusers folder (SD1/SD2/SDXL,"
                             " SD3/SD3.5, Flux.1) (default: built-in demo)")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                        help="override the scheduler's prediction type of a single-file checkpoint"
                             " (SD2 defaults to v_prediction, as the 768-v models need; SD2 512-base needs epsilon)")
    parser.add_argument("--checkpoint-dir", metavar="DIR",
                        help="folder of checkpoints (.safetensors files, diffusers folders) for the checkpoint dropdown")
    parser.add_argument("--lora-dir", metavar="DIR", action="append", default=[],
                        help="LoRA folder, scanned recursively; repeat for more (demo: its own folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (0: any free port; default 7860)")
    parser.add_argument("--outputs", metavar="DIR", help="where images are saved (default: DATA_DIR/outputs)")
    parser.add_argument("--save-incomplete-images", action="store_true",
                        help="also save images an Interrupt or a Skip cut short (they are shown either way),"
                             " as A1111's setting of that name")
    parser.add_argument("--backups", choices=["auto", "device", "host"], default="auto",
                        help="where LoRA backups of GPU weights live: auto (on the GPU while it has room), "
                             "device, or host (pinned RAM: least VRAM)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="demo LoRAs, library cache and outputs (default: $LORAPROMPT_HOME or ~/.cache/loraprompt/demo)")


def run(args: argparse.Namespace) -> int:
    """Load the model and the library, then serve until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("loraprompt webui needs the web UI extra: pip install 'loraprompt[ui]'", file=sys.stderr)
        return 2
    from loraprompt.errors import LoraPromptError
    from loraprompt.hosts import is_loopback
    from loraprompt.integrations.diffusers import patcher_for
    from loraprompt.library import Library
    from loraprompt.models import default_data_dir, load_demo, load_model
    from loraprompt.ui.txt2img import Txt2Img
    from loraprompt.ui.webui import serve

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    lora_dirs = [Path(d) for d in args.lora_dir]
    try:
        if args.checkpoint:
            print(f"loading {args.checkpoint} (offline) ...", flush=True)
            model = load_model(args.checkpoint, args.prediction_type)
            if model.family == "sd2" and args.prediction_type is None and not Path(args.checkpoint).is_dir():
                print("SD2 checkpoint: assuming v-prediction (768-v); pass --prediction-type epsilon for 512-base",
                      flush=True)
        else:
            # the demo LoRAs are named only where they are scanned: --lora-dir replaces their folder
            print("building the demo model" + ("" if lora_dirs else f"; demo LoRAs in {data_dir / 'models' / 'Lora'}"),
                  flush=True)
            model, demo_loras = load_demo(data_dir)
            lora_dirs = lora_dirs or [demo_loras]
    except LoraPromptError as exc:
        print(f"loraprompt webui: {exc}", file=sys.stderr)
        return 2
    if not lora_dirs:
        print("loraprompt webui: no --lora-dir given; the gallery will be empty", file=sys.stderr)
    for d in lora_dirs:
        if not d.is_dir():
            print(f"loraprompt webui: --lora-dir {d} is not a folder", file=sys.stderr)
            return 2
    try:
        checkpoints = model_choices(model, args, data_dir)
    except LoraPromptError as exc:
        print(f"loraprompt webui: {exc}", file=sys.stderr)
        return 2
    outputs = Path(args.outputs) if args.outputs else data_dir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    library = Library([str(d) for d in lora_dirs], cache_dir=str(data_dir / "cache"))
    engine = Txt2Img(model, library, outputs, save_incomplete=args.save_incomplete_images)
    patcher_for(model.pipe, backups=getattr(args, "backups", "auto"))
    scanned = f"in {', '.join(str(d) for d in lora_dirs)}" if lora_dirs else "(no LoRA folder)"
    print(f"loraprompt webui: {model.name} ({model.family}), {len(library.entries)} LoRAs {scanned}, outputs in {outputs}",
          flush=True)
    if not is_loopback(args.host):
        print(f"loraprompt webui: listening on {args.host}: anyone who can reach it can generate, browse LoRAs "
              "and train new ones from images they upload (the Train tab's folder field is off)", file=sys.stderr)
    serve(engine, args.host, args.port or free_port(args.host), [str(outputs)], data_dir / "thumbs", checkpoints=checkpoints)
    return 0


def model_choices(model: Any, args: argparse.Namespace, data_dir: Path) -> dict[str, Callable[[], Any]]:
    """The checkpoint dropdown: the loaded model (under its name), then --checkpoint-dir's checkpoints."""
    from loraprompt.models import load_demo, load_model
    from loraprompt.models.checkpoint import scan_checkpoints

    if not args.checkpoint_dir:
        return {}
    prediction = args.prediction_type
    if args.checkpoint:
        first = Path(args.checkpoint).expanduser().resolve()
        choices: dict[str, Callable[[], Any]] = {model.name: lambda: load_model(first, prediction)}
    else:
        first = None
        choices = {model.name: lambda: load_demo(data_dir)[0]}
    skipped: list[tuple[Path, str]] = []
    found = scan_checkpoints(args.checkpoint_dir, skipped)
    for path, reason in skipped:
        print(f"loraprompt webui: not in the checkpoint list: {path}: {reason}", file=sys.stderr)
    for name, path in found.items():
        if path.resolve() != first and name not in choices:
            choices[name] = functools.partial(load_model, path, prediction)
    return choices


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
