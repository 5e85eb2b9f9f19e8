"""Which model family an adapter was made for. There is one detector for the reader and the
library (`loraprompt.keymaps.family.detect_file_family`, over tensor names, shapes and metadata);
this module re-exports it under the adapters' names."""

from __future__ import annotations

from loraprompt.keymaps.family import DIT, FAMILY_NAMES, Detection, detect_file_family, family_from_metadata

__all__ = ["DIT", "FAMILY_NAMES", "Detection", "detect_file_family", "family_from_metadata"]
