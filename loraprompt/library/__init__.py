"""The LoRA library: folder scan, safetensors headers (no torch), hashes, metadata, previews,
sidecars, name resolution, card data and the path policy for web routes. Imports neither torch
nor gradio.

    lib = Library(["models/Lora"])            # cached scan; lib.entries, lib.refresh()
    r = lib.resolve("name")                   # Resolution(entry, diagnostics, how)
    lib.hashes(r.entry)["a1111_short"]        # "Lora hashes" value (computed lazily, cached)
    search(lib, "cat", family="sdxl")         # SearchResult(entries, hidden_by_family, ...)
    card(lib, entry)                          # plain values; escape_html() them into HTML
    lib.safe_file(ref)                        # Path a web route may serve, or None
    lib.safe_image(ref)                       # (that Path, its image type by its bytes), or None
"""

from __future__ import annotations

from loraprompt.library.cards import (
    SearchResult,
    card,
    escape_html,
    family_label,
    folder_tree,
    json_for_script,
    search,
)
from loraprompt.library.duplicates import DuplicateGroup
from loraprompt.library.entry import Entry
from loraprompt.library.hashes import file_hashes
from loraprompt.library.library import Library, RefreshReport
from loraprompt.library.metadata import MetadataSummary
from loraprompt.library.resolve import Resolution

__all__ = [
    "DuplicateGroup",
    "Entry",
    "Library",
    "MetadataSummary",
    "RefreshReport",
    "Resolution",
    "SearchResult",
    "card",
    "escape_html",
    "family_label",
    "file_hashes",
    "folder_tree",
    "json_for_script",
    "search",
]
