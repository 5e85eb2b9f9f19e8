"""`loraprompt inspect FILE... [--json]`: format, algorithms, family, ranks, metadata and hashes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from loraprompt.errors import AdapterFileError


def add_arguments(parser: argparse.ArgumentParser, command_name: str = "inspect") -> None:
    """Arguments of `loraprompt inspect`."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="LoRA/LyCORIS files (.safetensors, .pt, .ckpt, .bin)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--no-hashes", action="store_true", help="skip hashing (which reads the whole file)")


def run(args: argparse.Namespace) -> int:
    """Describe each file; 0 when all were read, 1 when any was refused (its error is reported)."""
    from loraprompt.adapters.reader import read_adapter
    from loraprompt.adapters.summary import render, summarize
    from loraprompt.library.hashes import file_hashes

    results: list[dict[str, Any]] = []
    failed = 0
    for path in args.files:
        try:
            adapter = read_adapter(path)
            hashes = None if args.no_hashes else file_hashes(path)
            results.append(summarize(adapter, hashes))
        except AdapterFileError as exc:
            failed += 1
            results.append({"path": path, "error": str(exc)})
    if args.json:
        json.dump(results if len(results) > 1 else results[0], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for info in results:
            if "error" in info:
                print(f"error: {info['error']}", file=sys.stderr)
            else:
                print(render(info))
    return 1 if failed else 0
