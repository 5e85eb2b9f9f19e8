"""`loraprompt serve`: the HTTP APIs without the web page (the built-in demo model unless
`--checkpoint` names a local checkpoint); `--ray` runs them as a Ray Serve application."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprompt.hosts import is_loopback


def add_arguments(parser: argparse.ArgumentParser, command_name: str = "serve") -> None:
    """Options of `loraprompt serve`."""
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="single-file .safetensors checkpoint or diffusers folder (default: built-in demo)")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"],
                        help="override the scheduler's prediction type of a single-file checkpoint")
    parser.add_argument("--lora-dir", metavar="DIR", action="append", default=[],
                        help="LoRA folder, scanned recursively; repeat for more (demo: its own folder)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860, as Automatic1111)")
    parser.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]",
                        help="HTTP basic auth for every API route, as Automatic1111's --api-auth")
    parser.add_argument("--cors-allow-origins", metavar="ORIGINS", help="comma-separated origins allowed by CORS (default: none)")
    parser.add_argument("--cors-allow-origins-regex", metavar="REGEX", help="origins allowed by CORS, as a regular expression")
    parser.add_argument("--outputs", metavar="DIR", help="where images are saved when a request asks (default: DATA_DIR/outputs)")
    parser.add_argument("--save-incomplete-images", action="store_true",
                        help="also save images an interrupt or a skip cut short, as A1111's setting of that name")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="demo LoRAs, caches, downloads and outputs (default: $LORAPROMPT_HOME or ~/.cache/loraprompt/demo)")
    limits = parser.add_argument_group("limits per request")
    limits.add_argument("--max-steps", type=int, default=150, help="sampling steps (default 150)")
    limits.add_argument("--max-size", type=int, default=2048, help="width and height in pixels (default 2048)")
    limits.add_argument("--max-images", type=int, default=16, help="images per request (default 16)")
    limits.add_argument("--max-queue", type=int, default=64, help="requests waiting for the model; more get 503 (default 64)")
    limits.add_argument("--max-download-mb", type=float, default=1024, help="size cap of a LoRA downloaded from a URL (default 1024)")
    limits.add_argument("--download-timeout", type=float, default=60, help="seconds before a LoRA download gives up (default 60)")
    ray = parser.add_argument_group("scale-out on Ray Serve (pip install 'ray[serve]')")
    ray.add_argument("--ray", action="store_true", help="run the API as a Ray Serve application")
    ray.add_argument("--replicas", type=int, default=2, help="model replicas (default 2)")
    ray.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster (default: start a local one, or RAY_ADDRESS)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each replica reserves (default 0: CPU)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica reserves (default 1)")
    ray.add_argument("--sets-per-replica", type=int, default=4,
                     help="LoRA sets each replica keeps loaded for Ray Serve's multiplexed routing (default 4)")


@dataclass
class ServeConfig:
    """What a process needs to load the model and its LoRA library (a Ray replica gets a copy)."""

    checkpoint: str | None = None
    prediction_type: str | None = None
    lora_dirs: list[str] = field(default_factory=list)
    data_dir: str = ""
    outputs: str = ""
    save_incomplete: bool = False  # --save-incomplete-images

    def load_engine(self) -> Any:
        """The `Txt2Img` engine on the model and library this config names."""
        from loraprompt.library import Library
        from loraprompt.models import load_demo, load_model
        from loraprompt.ui.txt2img import Txt2Img

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        data_dir = Path(self.data_dir)
        lora_dirs = [Path(d) for d in self.lora_dirs]
        if self.checkpoint:
            model = load_model(self.checkpoint, self.prediction_type)
        else:
            model, demo_loras = load_demo(data_dir)
            lora_dirs = lora_dirs or [demo_loras]
            self.lora_dirs = [str(d) for d in lora_dirs]
        for d in lora_dirs:
            if not d.is_dir():
                from loraprompt.errors import LoraPromptError

                raise LoraPromptError(f"--lora-dir {d} is not a folder")
        outputs = Path(self.outputs)
        outputs.mkdir(parents=True, exist_ok=True)
        library = Library([str(d) for d in lora_dirs], cache_dir=str(data_dir / "cache"))
        return Txt2Img(model, library, outputs, save_incomplete=self.save_incomplete)

    @property
    def download_dir(self) -> Path:
        return Path(self.data_dir) / "downloads"


def config_of(args: argparse.Namespace) -> ServeConfig:
    from loraprompt.models import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    return ServeConfig(args.checkpoint, args.prediction_type, [os.path.abspath(d) for d in args.lora_dir],
                       str(data_dir.absolute()), str(Path(args.outputs).absolute() if args.outputs else data_dir.absolute() / "outputs"),
                       args.save_incomplete_images)


def cmd_flags(args: argparse.Namespace, config: ServeConfig) -> dict[str, Any]:
    """A1111's flags (GET /sdapi/v1/cmd-flags) that hold for this server: the API only, no web UI."""
    return {"nowebui": True, "listen": not is_loopback(args.host), "server_name": args.host,
            "port": args.port, "data_dir": config.data_dir, "ckpt": config.checkpoint,
            "lora_dir": config.lora_dirs[0] if config.lora_dirs else None,
            "cors_allow_origins": args.cors_allow_origins, "cors_allow_origins_regex": args.cors_allow_origins_regex}


def run(args: argparse.Namespace) -> int:
    """Load the model (or start Ray), then serve until interrupted."""
    from loraprompt.errors import LoraPromptError
    from loraprompt.serve.app import build_app, parse_auth
    from loraprompt.serve.service import Limits, Service

    try:
        parse_auth(args.api_auth)
    except ValueError as exc:
        print(f"loraprompt serve: {exc}", file=sys.stderr)
        return 2
    config = config_of(args)
    limits = Limits(args.max_steps, args.max_size, args.max_images, args.max_queue)
    cors = [o.strip() for o in (args.cors_allow_origins or "").split(",") if o.strip()]
    if not is_loopback(args.host) and not args.api_auth:
        print(f"loraprompt serve: listening on {args.host} without --api-auth: anyone who can reach it can generate",
              file=sys.stderr)
    if args.ray:
        try:
            from loraprompt.serve.ray_app import run_ray
        except ImportError as exc:
            print(f"loraprompt serve --ray needs Ray Serve: pip install 'ray[serve]' ({exc})", file=sys.stderr)
            return 2
        return run_ray(args, config, limits, cors)
    try:
        print("loading the model (offline) ...", flush=True)
        engine = config.load_engine()
    except LoraPromptError as exc:
        print(f"loraprompt serve: {exc}", file=sys.stderr)
        return 2
    service = Service(engine, download_dir=config.download_dir, limits=limits, max_download_mb=args.max_download_mb,
                      download_timeout_s=args.download_timeout)
    service.cmd_flags = cmd_flags(args, config)
    app = build_app(service, api_auth=args.api_auth, cors_origins=cors, cors_origin_regex=args.cors_allow_origins_regex)
    import uvicorn

    print(f"loraprompt serve: {engine.model.name} ({engine.model.family}), {len(engine.library.entries)} LoRAs;"
          f" http://{args.host}:{args.port}/sdapi/v1/txt2img and /predictions", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        service.close()
    return 0
