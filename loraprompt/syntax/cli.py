"""``loraprompt parse``: print a prompt's parse (tags, LoRAs, diagnostics) as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from loraprompt.syntax.parser import parse


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of ``loraprompt parse``."""
    parser.add_argument("prompt", help="the positive prompt ('-' reads it from standard input)")
    parser.add_argument("--profile", choices=["loraprompt", "a1111"], default="loraprompt",
                        help="a1111 reproduces Automatic1111 v1.10.1 exactly (default: loraprompt)")
    parser.add_argument("--negative", default=None, help="a negative prompt to check (its tags are never applied)")
    parser.add_argument("--no-comments", action="store_true", help="keep '#' text (A1111's 'Enable comments' off)")
    parser.add_argument("--duplicates", choices=["a1111", "sum", "last", "first", "error"], default="a1111",
                        help="what repeated LoRA names mean (default: as A1111 applies them)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any error is found")


def run(args: argparse.Namespace) -> int:
    """Parse and print; the exit status is 1 with --strict and an error, else 0."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    comments = not args.no_comments
    parsed = parse(prompt, args.profile, comments, duplicates=args.duplicates)
    out = parsed.to_json()
    errors = list(parsed.errors)
    if args.negative is not None:
        negative = parse(args.negative, args.profile, comments, negative=True)
        out["negative"] = negative.to_json()
        errors.extend(negative.errors)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    for diagnostic in (*parsed.diagnostics, *(negative.diagnostics if args.negative is not None else ())):
        print(diagnostic, file=sys.stderr)
    return 1 if args.strict and errors else 0
