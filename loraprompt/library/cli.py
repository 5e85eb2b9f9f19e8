"""`loraprompt scan DIR... [--json]`: list the LoRA files found, with family, alias and trigger words."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from loraprompt.errors import AdapterFileError, LoraPromptError
from loraprompt.library.cards import card, family_label
from loraprompt.library.library import Library


def add_arguments(parser: argparse.ArgumentParser, command_name: str = "scan") -> None:
    """Arguments of `loraprompt scan`."""
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="LoRA folders to scan (recursively)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--cache-dir", default=None, help="where the scan cache lives (default: user cache dir)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the on-disk cache")
    parser.add_argument("--hashes", action="store_true", help="also compute file hashes (reads every file)")
    parser.add_argument("--duplicates", action="store_true", help="report groups of duplicate files")


def run(args: argparse.Namespace) -> int:
    """Scan, print, and return 0 (1 when a folder is missing or a file is broken, 2 when a file
    is given for a folder)."""
    try:
        library = Library(args.dirs, cache_dir=args.cache_dir, persist=not args.no_cache)
    except ValueError as exc:
        print(f"loraprompt scan: {exc} (`loraprompt inspect FILE` reads one file)", file=sys.stderr)
        return 2
    report = library.last_report
    rows: list[dict[str, Any]] = []
    for entry in library.entries:
        row = card(library, entry)
        row["path"] = entry.path
        if args.hashes and not entry.error:
            try:
                row["hashes"] = library.hashes(entry)
            except (LoraPromptError, OSError) as exc:  # that file's error, in its row: the others are still listed
                row["error"] = f"cannot be hashed: {exc.reason if isinstance(exc, AdapterFileError) else exc}"
        rows.append(row)
    groups = [{"kind": g.kind, "files": [e.relpath for e in g.entries]} for g in library.duplicates()] if args.duplicates else []
    problems = (len(report.offline_roots) + len(report.offline_links) + len(report.unmounted) + len(report.not_files) + len(report.unreadable)
                + sum(1 for r in rows if r["error"]))
    if args.json:
        doc = {
            "roots": [str(r) for r in library.roots],
            "entries": rows,
            "offline_roots": list(report.offline_roots),
            "offline_links": list(report.offline_links),
            "unmounted": list(report.unmounted),
            "not_files": list(report.not_files),
            "unreadable": list(report.unreadable),
            "pending": list(report.pending),
            "files_read": report.files_read,
        }
        if args.duplicates:
            doc["duplicates"] = groups
        json.dump(doc, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 1 if problems else 0
    for r in rows:
        words = ", ".join(w for w, _ in r["trigger_words"][:5])
        status = f"  ERROR: {r['error']}" if r["error"] else ""
        short = f"  {r['hashes']['a1111_short']}" if "hashes" in r else ""
        print(f"{family_label(r['family']):7} {r['relpath']}  [{r['tag_name']}]{short}  {words}{status}")
    for root in report.offline_roots:
        print(f"missing folder (entries kept from the cache): {root}", file=sys.stderr)
    for link in report.offline_links:
        print(f"link to a place not reachable (entries kept from the cache): {link}", file=sys.stderr)
    for path in report.unmounted:
        print(f"folder a drive was mounted on, now without it (entries kept from the cache): {path}", file=sys.stderr)
    for path in report.not_files:
        print(f"not a regular file (a FIFO, socket or device), left out: {path}", file=sys.stderr)
    for path in report.unreadable:
        print(f"folder that cannot be listed (entries kept from the cache): {path}", file=sys.stderr)
    for path in report.pending:
        print(f"still being written, skipped: {path}", file=sys.stderr)
    for g in groups:
        print(f"duplicates ({g['kind']}): {', '.join(g['files'])}")
    print(f"{len(rows)} files, {report.files_read} read, {len(rows) - report.files_read} from the cache", file=sys.stderr)
    return 1 if problems else 0
