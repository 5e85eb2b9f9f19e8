"""Library entries as the gallery's card records (JSON) and as an escaped details table (HTML); no
gradio. Labels, HTML escaping and script-safe JSON come from `loraprompt.library.cards`.

Everything that comes from files (names, metadata, sidecars) is escaped here or sent as JSON whose
`<`, `>`, `&` and quotes are `\\u` escapes, so it stays inert wherever a page puts it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from loraprompt.library import Entry
from loraprompt.library.cards import escape_html, family_label

MAX_CARD_TRIGGERS = 8
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_CARD_TEXT = 200
MAX_SEARCH_TEXT = 4000
MAX_DETAIL_TEXT = 2000
MAX_DETAIL_TAGS = 40
USER_LABELS = {"description": "Description", "sd version": "SD version", "activation text": "Activation text",
               "preferred weight": "Preferred weight", "negative text": "Negative text", "notes": "Notes",
               "favorite": "Favorite", "nsfw": "NSFW"}
USER_KEYS = tuple(USER_LABELS)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def family_title(entry: Entry) -> str:
    """Where the badge's base model comes from, in words."""
    label = family_label(entry.family, "Unknown base model")
    if entry.family_set_by_user:
        return f"{label} (set in {entry.name}.json)"
    if entry.family_source == "keys":
        return f"{label} (from the tensor shapes)"
    if entry.family_source == "metadata":
        return f"{label} (from the training metadata)"
    return label


def default_weight(entry: Entry) -> float:
    """The strength a card starts with: the preferred weight, else 1."""
    weight = entry.preferred_weight
    return weight if weight is not None and math.isfinite(weight) else 1.0


def card_record(entry: Entry, card_id: str, thumb_url: str | None, tag_name: str, tag_note: str = "") -> dict[str, Any]:
    """The JSON a card is drawn from: short, capped values only; `tag_name` is the name it inserts
    and `tag_note` why that is not simply the file's stem (empty when it is)."""
    return {
        "id": card_id,
        "name": entry.name,
        "tag_name": tag_name,
        "tag_note": tag_note,
        "alias": entry.alias,
        "folder": entry.folder,
        "family": entry.family,
        "badge": family_label(entry.family, "?"),
        "family_title": family_title(entry),
        "triggers": [_cap(w, 60) for w, _ in entry.trigger_words()[:MAX_CARD_TRIGGERS]],
        "weight": default_weight(entry),
        "search": _cap(entry.search_words.lower(), MAX_SEARCH_TEXT),  # lower(), as the page's toLowerCase()
        "size": entry.size,
        "mtime": entry.mtime,
        "thumb": thumb_url,
        "nsfw": entry.nsfw,
        "favorite": entry.favorite,
        "error": entry.error,
        "offline": entry.offline,
        # in a dot-folder or dot-named (macOS's `._x.safetensors`): shown only for a search of 4+
        # characters, as A1111 shows it; left out otherwise (the records of 100,000 cards stay small)
        **({"hidden": True} if entry.hidden else {}),
    }


def user_values(entry: Entry) -> dict[str, Any]:
    """The editor's fields from A1111's `<stem>.json` (absent keys left out)."""
    return {k: entry.user[k] for k in USER_KEYS if k in entry.user}


def _row(label: str, value: Any, source: str | None = None) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    cell = escape_html(_cap(text, MAX_DETAIL_TEXT))
    if source:
        cell += f' <span class="lp-source">({escape_html(source)})</span>'
    return f"<tr><th>{escape_html(label)}</th><td>{cell}</td></tr>"


def _when(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def details_rows(entry: Entry, hashes: Mapping[str, str | None]) -> list[tuple[str, Any, str | None]]:
    """(label, value, source) rows of the details view, the user's own `<stem>.json` first."""
    rows: list[tuple[str, Any, str | None]] = [("File", entry.relpath, None), ("Folder", entry.root, None)]
    if entry.alias and entry.alias != entry.name:
        rows.append(("Alias", entry.alias, "ss_output_name"))
    rows.append(("Base model", family_title(entry), None))
    rows += [("Size", f"{entry.size:,} bytes", None), ("Modified", _when(entry.mtime), None)]
    for key, label in (("sha256", "SHA-256 (AutoV2 = first 10)"), ("tensor_sha256", "Tensor hash (A1111, AutoV3)")):
        if hashes.get(key):
            rows.append((label, hashes[key], None))
    for key in USER_KEYS:
        value = entry.user.get(key)
        if value not in (None, "", 0, False):
            rows.append((USER_LABELS[key], value, f"{entry.name}.json"))
    if entry.description:
        rows.append(("Description", entry.description, "description file"))
    words = entry.trigger_words()
    if words:
        rows.append(("Trigger words", ", ".join(w for w, _ in words), ", ".join(sorted({s for _, s in words}))))
    s = entry.summary
    for label, value in (("Output name", s.output_name), ("Trained on", s.base_model),
                         ("Base model version", s.base_model_version), ("Resolution", s.resolution),
                         ("Epochs", s.epochs), ("Network dim", s.dim), ("Network alpha", s.alpha),
                         ("Network module", s.network_module), ("Training started", s.training_started_at),
                         ("Training images", s.num_train_images), ("Clip skip", s.clip_skip)):
        if value:
            rows.append((label, value, "header"))
    if s.tags:
        shown = ", ".join(f"{tag} ({count})" for tag, count in s.tags[:MAX_DETAIL_TAGS])
        rows.append(("Training tags", shown, "ss_tag_frequency"))
    for key, value in sorted(s.modelspec.items()):
        rows.append((f"modelspec.{key}", value, "header"))
    for kind, summary in sorted(entry.imports.items()):
        if isinstance(summary, Mapping):
            for key, value in summary.items():
                if value not in (None, "", [], {}):
                    rows.append((key.replace("_", " ").capitalize(), value, kind))
    if entry.error:
        rows.append(("Problem", entry.error, None))
    rows += [(note, "", None) for note in entry.notes]
    return rows


def details_html(entry: Entry, hashes: Mapping[str, str | None], header_rows: Sequence[tuple[str, str]] = ()) -> str:
    """The details view: a table of every row, then the raw header metadata rows (as A1111's
    "Show internal metadata" lists them) in a collapsed section; all text escaped."""
    parts = ['<table class="lp-details-table">']
    parts += [_row(label, value, source) for label, value, source in details_rows(entry, hashes)]
    parts.append("</table>")
    if header_rows:
        parts.append(f"<details><summary>Header metadata ({len(header_rows)} rows)</summary>"
                     '<table class="lp-details-table lp-header-table">')
        parts += [_row(key, value) for key, value in header_rows]
        parts.append("</table></details>")
    return "".join(parts)


def card_ids(entries: Iterable[Entry], roots: list[str]) -> dict[str, Entry]:
    """Stable card ids (`<root index>/<path under the root>`) for `entries`. A path that is not
    UTF-8 (lone surrogates from `os.fsdecode`) cannot go through a URL or the page's UTF-8: its id
    is `<root index>~/` and the path with each such byte written `\ufffd` and two hex digits (and
    a `\ufffd` of the name doubled), which no other path's id can be, whatever else is scanned."""
    index = {root: i for i, root in enumerate(roots)}
    ids: dict[str, Entry] = {}
    for e in entries:
        root = index.get(e.root, 0)
        if e.relpath.isascii() or not _SURROGATE.search(e.relpath):
            ids[f"{root}/{e.relpath}"] = e
        else:
            escaped = _SURROGATE.sub(lambda m: f"\ufffd{ord(m.group()) & 0xff:02x}", e.relpath.replace("\ufffd", "\ufffd\ufffd"))
            ids[f"{root}~/{escaped}"] = e
    return ids
