"""How often and when each card's LoRA was used in a generation, for the gallery's "Most used" and
"Last used" sorts. Kept beside the card records, not in them: the records are serialised once per
library snapshot, while a generation changes the usage without changing any entry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loraprompt.library import Entry
from loraprompt.library.cards import json_for_script
from loraprompt.ui.gallery_service import GalleryService, usage_stamp


def usage_document(service: GalleryService, entries: Iterable[Entry] | None = None) -> dict[str, Any]:
    """{"stamp": a value that changes whenever a generation is recorded for any card, "usage":
    card id -> [times used, last use in ms since the epoch] for the cards used at least once}, of
    every card or of `entries`."""
    snap = service.snapshot()
    stamp = usage_stamp(service.library)
    usage: dict[str, list[int]] = {}
    for entry in snap.entries if entries is None else entries:
        uses, last_ns = service.library.usage(entry)
        if uses:
            usage[snap.ids[entry.path]] = [uses, last_ns // 1_000_000]
    return {"stamp": stamp, "usage": usage}


def with_usage(service: GalleryService, cards_json: str, entries: Iterable[Entry] | None = None) -> str:
    """A cards document (JSON text of an object) with `usage_stamp` and `usage` (of every card, or
    of the cards of `entries`) added at the end."""
    doc = usage_document(service, entries)
    return cards_json[:-1] + ',"usage_stamp":' + json_for_script(doc["stamp"]) + ',"usage":' + json_for_script(doc["usage"]) + "}"
