"""Card data for the gallery as plain values, escaping helpers for card text, and search, filter,
sort and folder tree over entries. The UI turns these into HTML; nothing here imports gradio."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loraprompt.library.entry import Entry
from loraprompt.library.library import Library
from loraprompt.library.scanner import natural_key
from loraprompt.library.sidecars import escape_surrogates

FAMILY_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux", "flux2": "Flux.2", "wan": "Wan"}
SORTS = ("name", "date", "size", "path", "uses", "recent")
MIN_HIDDEN_QUERY = 4  # A1111: models in dot-folders (or dot-named) show only for searches this long
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027",
                               "\u2028": "\\u2028", "\u2029": "\\u2029"})


def escape_html(text: object) -> str:
    """`text` safe inside HTML element content and quoted attributes (quotes, `<>&` escaped;
    newlines kept as character references so an attribute stays on one line)."""
    return html.escape(str(text), quote=True).replace("\r", "&#13;").replace("\n", "&#10;")


def json_for_script(value: Any) -> str:
    """Compact JSON safe to embed inside a `<script>` element or an HTML attribute (`<`, `>`, `&`,
    `'` and line separators as `\\u` escapes) and to send as UTF-8 (lone surrogates from file
    names that are not UTF-8 as `\\udcXX` escapes); ValueError on NaN or infinity, which JSON lacks."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).translate(_JSON_ESCAPES)
    return escape_surrogates(text)


def family_label(family: str | None, unknown: str = "Unknown") -> str:
    """The badge text A1111 uses for an SD version; `unknown` for anything else."""
    return FAMILY_LABELS.get(family or "", unknown)


def card(library: Library, entry: Entry) -> dict[str, Any]:
    """Everything a card and its details view show, as plain (unescaped) values. `preview` is the
    reference `Library.safe_file` serves; `tag_name` is the name a click inserts."""
    imported = entry.imports.get("civitai", {}).get("description") or entry.imports.get("api_info", {}).get("description", "")
    description = str(entry.user.get("description") or "") or entry.description or imported
    return {
        "id": entry.relpath,
        "root": entry.root,
        "name": entry.name,
        "alias": entry.alias,
        "tag_name": library.display_name(entry),
        "relpath": entry.relpath,
        "folder": entry.folder,
        "preview": library.file_ref(entry.preview) if entry.preview else None,
        "has_cover_image": entry.summary.has_cover_image,
        "family": entry.family,
        "family_label": family_label(entry.family),
        "family_source": "user" if entry.family_set_by_user else entry.family_source,
        "base_model": entry.base_model,
        "trigger_words": [list(t) for t in entry.trigger_words()],
        "activation_text": entry.activation_text,
        "negative_text": str(entry.user.get("negative text") or ""),
        "preferred_weight": entry.preferred_weight,
        "description": description,
        "notes": str(entry.user.get("notes") or ""),
        "size": entry.size,
        "mtime": entry.mtime,
        "favorite": entry.favorite,
        "nsfw": entry.nsfw,
        "hidden": entry.hidden,
        "offline": entry.offline,
        "error": entry.error,
        "notes_from_scan": list(entry.notes),
        "summary": entry.summary.to_json(),
    }


@dataclass(frozen=True)
class SearchResult:
    """Entries that match, in order, and what was hidden and why (so the UI can say so)."""

    entries: tuple[Entry, ...]
    total: int  # entries before any filter
    hidden_by_family: int = 0  # matched the search but not the base-model filter
    hidden_folders: int = 0  # in dot-folders or dot-named (`Entry.hidden`), shown only for longer searches
    family: str | None = None
    hidden_families: dict[str, int] = field(default_factory=dict)  # family label -> count hidden

    def filter_note(self) -> str:
        """A line for the UI, e.g. "23 hidden by the SDXL filter"; empty when nothing is hidden."""
        if not self.hidden_by_family:
            return ""
        return f"{self.hidden_by_family} hidden by the {family_label(self.family)} filter"


def _sort_key(sort: str, library: Library) -> Any:
    if sort == "name":
        return lambda e: natural_key(library.display_name(e))
    if sort == "date":
        return lambda e: e.mtime_ns
    if sort == "size":
        return lambda e: e.size
    if sort == "uses":
        return lambda e: library.usage(e)[0]
    if sort == "recent":
        return lambda e: library.usage(e)[1]
    return None


def search(
    library: Library,
    query: str = "",
    *,
    entries: Sequence[Entry] | None = None,
    folder: str | None = None,
    family: str | None = None,
    sort: str = "path",
    descending: bool = False,
    favorites_only: bool = False,
) -> SearchResult:
    """Filter and sort entries. `query`: whitespace-separated terms, all of which must occur
    (case-insensitively) in the path, names, tags, trigger words, notes or descriptions. `folder`:
    that folder and below. `family`: the loaded model's family; entries of another known family
    are hidden and counted (unknown ones stay). `sort`: "path" (walk order), "name", "date", "size",
    "uses" or "recent" (from `Library.note_use`)."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    pool = list(library.entries if entries is None else entries)
    terms = query.casefold().split()
    show_hidden = len(query.strip()) >= MIN_HIDDEN_QUERY
    out: list[Entry] = []
    hidden_folders = 0
    hidden_families: dict[str, int] = {}
    for e in pool:
        if folder and not (e.folder == folder or e.folder.startswith(folder.rstrip("/") + "/")):
            continue
        if favorites_only and not e.favorite:
            continue
        if terms:
            text = e.search_text
            if not all(t in text for t in terms):
                continue
        if e.hidden and not show_hidden:
            hidden_folders += 1
            continue
        if family and e.family and e.family != family:
            label = family_label(e.family)
            hidden_families[label] = hidden_families.get(label, 0) + 1
            continue
        out.append(e)
    key = _sort_key(sort, library)
    if key is not None:
        out.sort(key=key, reverse=descending)
    elif descending:
        out.reverse()
    return SearchResult(tuple(out), len(pool), sum(hidden_families.values()), hidden_folders, family, hidden_families)


def folder_tree(entries: Sequence[Entry]) -> dict[str, Any]:
    """Nested folders: {"name", "path", "count" (entries at and below), "children": [...]},
    naturally sorted, root first with name and path ""."""
    root: dict[str, Any] = {"name": "", "path": "", "count": 0, "children": {}}
    for e in entries:
        node = root
        node["count"] += 1
        path = ""
        for part in e.folder.split("/") if e.folder else ():
            path = f"{path}/{part}" if path else part
            node = node["children"].setdefault(part, {"name": part, "path": path, "count": 0, "children": {}})
            node["count"] += 1

    def finish(node: dict[str, Any]) -> dict[str, Any]:
        kids = sorted(node["children"].values(), key=lambda n: natural_key(n["name"]))
        return {**node, "children": [finish(k) for k in kids]}

    return finish(root)
