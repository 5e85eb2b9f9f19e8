"""The Lora cards page in A1111's extra-networks area, when the built-in Lora extension is off.

It produces the same item dicts as the built-in page (A1111 renders them), fed by loraprompt's
library. Unlike the built-in, it hides no card silently: every LoRA is listed and its base model
is in the search terms (type "sdxl" to filter); the loraprompt tab has the visible filter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container, Iterator
from typing import Any

from modules import ui_extra_networks
from modules.ui_extra_networks import quote_js

from loraprompt.library.cards import escape_html
from loraprompt.library.resolve import TagChoice, tag_hash, writable_name

from . import webui
from .api import header_metadata
from .runtime import Runtime, library_entries
from .user_metadata import preferred_weight

SD_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
TAG_NOTE, PLAIN_DESCRIPTION = "loraprompt_tag_note", "loraprompt_description"  # item keys A1111 ignores


def card_prompt(name: str, weight: float | None, activation_text: str, short_hash: str | None = None) -> str:
    """The JavaScript expression A1111 evaluates when a card is clicked (the built-in's form, with
    `hash=` after the strength when the file has no name that can be written in a tag)."""
    multiplier = str(weight) if weight else "opts.extra_networks_default_multiplier"
    end = f":hash={short_hash}>" if short_hash else ">"
    expr = quote_js(f"<lora:{name}:") + " + " + multiplier + " + " + quote_js(end)
    return expr + (" + " + quote_js(" " + activation_text) if activation_text else "")


def tag_note_description(note: str, description: Any) -> str:
    """A card's description with the tag-name warning first. A1111 escapes descriptions unless
    "Treat card description as HTML" (`extra_networks_card_description_is_html`, off by default)
    is on, so markup goes in only then; otherwise the warning is plain text, on a line of its own."""
    rest = str(description or "")
    if webui.opt("extra_networks_card_description_is_html", False):
        return f'<span class="loraprompt-tag-note">\u26a0 {escape_html(note)}.</span>' + (f"<br>{rest}" if rest else "")
    return f"\u26a0 {note}." + (f"\n{rest}" if rest else "")


class LoraPromptPage(ui_extra_networks.ExtraNetworksPage):
    """Cards for every file in the LoRA folders."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__("Lora")
        self.runtime = runtime

    def refresh(self) -> None:
        self.runtime.refresh()

    def create_user_metadata_editor(self, ui: Any, tabname: str) -> Any:
        """The card editor: the built-in Lora's fields (SD version, activation text, weight, ...);
        A1111's default for a page has only description and notes."""
        from .editor import LoraPromptMetadataEditor  # gradio: imported once the UI is built

        return LoraPromptMetadataEditor(ui, tabname, self)

    def create_item(self, name: str, index: int | None = None, enable_filter: bool = True) -> dict[str, Any] | None:
        entries = list(library_entries(self.runtime.library))
        entry = next((e for e in entries if e.name == name), None)
        return None if entry is None else self._item(entry, index, {e.name for e in entries})

    def _tag_name(self, entry: Any, stems: Container[str]) -> tuple[TagChoice, str | None]:
        """What the card inserts (and its short hash when by hash): the name A1111's card would
        (`lora_preferred_name`), unless it holds `: > = #`, which break the tag (loraprompt.library.resolve)."""
        profile = webui.profile()
        no_hash = "loraprompt's a1111 profile (no hash=)" if profile == "a1111" else None
        library = self.runtime.library
        choice = writable_name(library, entry, self.runtime.display_name(entry), taken=stems, no_hash=no_hash)
        if not choice.by_hash:
            return choice, None
        short, why = tag_hash(library, entry)
        if short is None:
            wanted = self.runtime.display_name(entry)
            return TagChoice(wanted, False, f"The name {wanted} breaks a <lora:...> tag and its hash cannot be read "
                                            f"({why}): rename the file"), None
        return choice, short

    def _embedded_preview(self, path: str, name: str, metadata: dict[str, Any]) -> str | None:
        """A1111's find_embedded_preview for a header whose `ssmd_cover_images` it can read: it
        json.loads the value (modules/ui_extra_networks.py:666), which raises for one that is not a
        JSON list (not JSON, or a `{`-value already decoded) and would fail the whole page."""
        try:
            readable = isinstance(json.loads(metadata["ssmd_cover_images"]), list)
        except (KeyError, TypeError, ValueError, RecursionError):
            return None
        return self.find_embedded_preview(path, name, metadata) if readable else None

    def read_user_metadata(self, item: dict[str, Any], use_cache: bool = True) -> None:
        """A1111's, with the tag-name warning kept in front of the description: A1111 calls it again
        on a card it rebuilds after an edit (get_single_card, modules/ui_extra_networks.py:167)."""
        note = item.get(TAG_NOTE)
        if note:
            item["description"] = item.get(PLAIN_DESCRIPTION)
        super().read_user_metadata(item, use_cache)
        if note:
            item[PLAIN_DESCRIPTION] = item.get("description")
            item["description"] = tag_note_description(note, item[PLAIN_DESCRIPTION])

    def _item(self, entry: Any, index: int | None, stems: Container[str] = ()) -> dict[str, Any]:
        """One card's item dict, as the built-in page builds it."""
        path = os.path.splitext(entry.path)[0]
        metadata = header_metadata(entry.path)
        family = entry.family
        item: dict[str, Any] = {
            "name": entry.name,
            "filename": entry.path,
            "shorthash": None,
            "preview": self.find_preview(path) or self._embedded_preview(path, entry.name, metadata),
            "description": self.find_description(path),
            "search_terms": [t for t in (self.search_terms_from_path(entry.path), SD_VERSIONS.get(family or "")) if t],
            "local_preview": f"{path}.{webui.opt('samples_format', 'png')}",
            "metadata": metadata,
            "sort_keys": {"default": index, **self.get_sort_keys(entry.path)},
            "sd_version": SD_VERSIONS.get(family or "", "Unknown"),
        }
        choice, short = self._tag_name(entry, stems)
        if choice.note:  # on the card, as the gallery's "name" badge says it (read_user_metadata puts it there)
            item[TAG_NOTE], item[PLAIN_DESCRIPTION] = choice.note, item["description"]
        self.read_user_metadata(item)
        user = item["user_metadata"]
        # A1111 pastes the raw value into the click's JavaScript; a number only keeps sidecar text out of it
        weight = preferred_weight(user.get("preferred weight"))
        item["prompt"] = card_prompt(choice.name, weight, str(user.get("activation text") or ""), short)
        negative = user.get("negative text")
        item["negative_prompt"] = quote_js(f"({negative}:1)" if negative else "")
        return item

    def list_items(self) -> Iterator[dict[str, Any]]:
        # by entry, not by name: two folders may hold the same stem, and a lookup per card is quadratic
        entries = list(library_entries(self.runtime.library))
        stems = {e.name for e in entries}
        for index, entry in enumerate(entries):
            yield self._item(entry, index, stems)

    def allowed_directories_for_previews(self) -> list[str]:
        return [str(root) for root in getattr(self.runtime.library, "roots", [])]
