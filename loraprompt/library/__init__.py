"""The LoRA library: folder scan, safetensors headers (no torch), hashes, metadata, previews,
sidecars, name resolution and the path policy for web routes. Imports neither torch nor gradio."""

from __future__ import annotations

from loraprompt.library.entry import Entry
from loraprompt.library.hashes import file_hashes
from loraprompt.library.library import DuplicateGroup, Library, RefreshReport
from loraprompt.library.metadata import MetadataSummary
from loraprompt.library.resolve import Resolution

__all__ = ["DuplicateGroup", "Entry", "Library", "MetadataSummary", "RefreshReport", "Resolution", "file_hashes"]
