"""`loraprompt` command line. Each subcommand lives in its own module, imported only when used,
so `loraprompt parse` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module with `add_arguments(parser)` and `run(args) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "parse": ("loraprompt.syntax.cli", "parse a prompt and print its LoRA activations as JSON"),
    "inspect": ("loraprompt.adapters.cli", "describe a LoRA/LyCORIS file: format, family, ranks, hashes"),
    "scan": ("loraprompt.library.cli", "scan LoRA folders and list what was found"),
    "webui": ("loraprompt.ui.cli", "launch the standalone web UI (demo model unless --checkpoint)"),
    "serve": ("loraprompt.serve.cli", "serve A1111's /sdapi/v1 and Replicate-style /predictions APIs (no web page)"),
    "merge": ("loraprompt.tools.cli", "merge LoRAs into a checkpoint, or LoRAs into one LoRA"),
    "convert": ("loraprompt.tools.cli", "convert a LoRA between kohya, diffusers/PEFT, ComfyUI, BFL and XLabs layouts"),
    "resize": ("loraprompt.tools.cli", "change a LoRA's rank by SVD"),
    "extract": ("loraprompt.tools.cli", "extract a LoRA from a fine-tuned checkpoint and its base"),
    "train": ("loraprompt.train.cli", "train a LoRA from a few images (a folder or a .zip)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="loraprompt", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"loraprompt {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser, name)
    args = cmd_parser.parse_args(argv[1:])
    args.command = name
    try:
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at exit
    except BrokenPipeError:  # `loraprompt scan --json | head`: stop quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
