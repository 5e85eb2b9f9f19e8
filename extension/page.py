"""The Lora cards page in A1111's extra-networks area, when the built-in Lora extension is off.

It produces the same item dicts as the built-in page (A1111 renders them), fed by loraprompt's
library. Unlike the built-in, it hides no card silently: every LoRA is listed and its base model
is in the search terms (type "sdxl" to filter); the loraprompt tab has the visible filter.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

from modules import ui_extra_networks
from modules.ui_extra_networks import quote_js

from . import webui
from .api import header_metadata
from .runtime import Runtime, library_entries

SD_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def preferred_weight(value: Any) -> float | None:
    """A `preferred weight` from `<stem>.json` as a number, None for 0 or anything not a finite number."""
    if isinstance(value, bool):
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        return None
    return weight if math.isfinite(weight) and weight != 0 else None


def card_prompt(name: str, weight: float | None, activation_text: str) -> str:
    """The JavaScript expression A1111 evaluates when a card is clicked (the built-in's form)."""
    multiplier = str(weight) if weight else "opts.extra_networks_default_multiplier"
    expr = quote_js(f"<lora:{name}:") + " + " + multiplier + " + " + quote_js(">")
    return expr + (" + " + quote_js(" " + activation_text) if activation_text else "")


class LoraPromptPage(ui_extra_networks.ExtraNetworksPage):
    """Cards for every file in the LoRA folders."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__("Lora")
        self.runtime = runtime

    def refresh(self) -> None:
        self.runtime.refresh()

    def create_item(self, name: str, index: int | None = None, enable_filter: bool = True) -> dict[str, Any] | None:
        entry = next((e for e in library_entries(self.runtime.library) if e.name == name), None)
        return None if entry is None else self._item(entry, index)

    def _item(self, entry: Any, index: int | None) -> dict[str, Any]:
        """One card's item dict, as the built-in page builds it."""
        path = os.path.splitext(entry.path)[0]
        metadata = header_metadata(entry.path)
        family = entry.family
        item: dict[str, Any] = {
            "name": entry.name,
            "filename": entry.path,
            "shorthash": None,
            "preview": self.find_preview(path) or self.find_embedded_preview(path, entry.name, metadata),
            "description": self.find_description(path),
            "search_terms": [t for t in (self.search_terms_from_path(entry.path), SD_VERSIONS.get(family or "")) if t],
            "local_preview": f"{path}.{webui.opt('samples_format', 'png')}",
            "metadata": metadata,
            "sort_keys": {"default": index, **self.get_sort_keys(entry.path)},
            "sd_version": SD_VERSIONS.get(family or "", "Unknown"),
        }
        self.read_user_metadata(item)
        user = item["user_metadata"]
        # A1111 pastes the raw value into the click's JavaScript; a number only keeps sidecar text out of it
        weight = preferred_weight(user.get("preferred weight"))
        item["prompt"] = card_prompt(self.runtime.display_name(entry), weight, str(user.get("activation text") or ""))
        negative = user.get("negative text")
        item["negative_prompt"] = quote_js(f"({negative}:1)" if negative else "")
        return item

    def list_items(self) -> Iterator[dict[str, Any]]:
        # by entry, not by name: two folders may hold the same stem, and a lookup per card is quadratic
        for index, entry in enumerate(list(library_entries(self.runtime.library))):
            yield self._item(entry, index)

    def allowed_directories_for_previews(self) -> list[str]:
        return [str(root) for root in getattr(self.runtime.library, "roots", [])]
