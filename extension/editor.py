"""The editor behind a Lora card's edit button, for loraprompt's cards page (extension/page.py).

A1111 gives a page without its own editor the generic one (description and notes only); this
one offers what the built-in Lora extension's does, with the same components in the same order
(A1111's JavaScript and the base class wire them): the Stable Diffusion version, the training
tags (a click toggles one in the activation text), activation text, preferred weight, negative
prompt, a random prompt from the tags, notes, and the header's training details.

Unlike the built-in, it shows `<stem>.json` as it is on disk when the editor opens, and Save
changes only the keys the user edited, in the file as it is on disk when saving: A1111 writes
back the whole object it read when the page was listed, losing what another tool (or
loraprompt's gallery) wrote since, and keys it does not know are kept either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
from modules import ui_extra_networks_user_metadata

from loraprompt.errors import LoraPromptError
from loraprompt.library import sidecars

from .user_metadata import (
    MAX_TAGS,
    SD_CHOICES,
    dataset_tags,
    edited,
    header_rows,
    random_prompt,
    shown_values,
    submitted_values,
    toggle_tag,
)


class LoraPromptMetadataEditor(ui_extra_networks_user_metadata.UserMetadataEditor):
    """The built-in Lora editor's fields and layout, saving only what was edited."""

    def __init__(self, ui: Any, tabname: str, page: Any) -> None:
        super().__init__(ui, tabname, page)
        self.select_sd_version: Any = None
        self.taginfo: Any = None
        self.edit_activation_text: Any = None
        self.slider_preferred_weight: Any = None
        self.edit_negative_text: Any = None
        self.row_random_prompt: Any = None
        self.random_prompt: Any = None
        self.shown: dict[str, dict[str, Any]] = {}  # card name -> the values its editor last showed

    # ---- reading ---------------------------------------------------------------------------
    def _item(self, name: str) -> dict[str, Any]:
        item: dict[str, Any] = self.page.items.get(name, {})
        return item

    def _json_path(self, name: str) -> Path | None:
        filename = self._item(name).get("filename")
        return Path(os.path.splitext(filename)[0] + ".json") if filename else None

    def get_user_metadata(self, name: str) -> dict[str, Any]:
        """`<stem>.json` as it is on disk now (the item's copy is from when the page was listed),
        kept as the item's; without one, the description from `<stem>.txt` as A1111 shows it."""
        item = self._item(name)
        path = self._json_path(name)
        current = sidecars.read_json(path) if path is not None else None
        if current is None:
            current = dict(item.get("user_metadata") or {}) if path is not None and path.exists() else {}
        item["user_metadata"] = current
        if "description" in current:
            return current
        # not the card's description: that may carry loraprompt's tag-name warning
        text = self.page.find_description(os.path.splitext(item["filename"])[0]) if item.get("filename") else None
        return {**current, "description": text or ""}

    def get_metadata_table(self, name: str) -> list[tuple[str, Any]]:
        table: list[tuple[str, Any]] = super().get_metadata_table(name)
        metadata = self._item(name).get("metadata")
        return table + header_rows(metadata if isinstance(metadata, dict) else {})

    def _tags(self, name: str) -> list[tuple[str, int]]:
        metadata = self._item(name).get("metadata")
        return dataset_tags(metadata if isinstance(metadata, dict) else {})

    def put_values_into_components(self, name: str) -> list[Any]:
        """The values of the edit button's outputs, in `create_editor`'s order: A1111's five (name,
        description, file table, preview, notes), then SD version, tags, activation text, weight,
        negative text, random-prompt row and random prompt."""
        values = super().put_values_into_components(name)
        shown = shown_values(self.get_user_metadata(name), str(self._item(name).get("sd_version", "Unknown")))
        self.shown[name] = shown  # what Save compares with: the text the boxes show
        tags = self._tags(name)
        weight = shown["preferred weight"]
        return [
            values[0], shown["description"], values[2], values[3], shown["notes"],
            shown["sd version"],
            gr.update(value=[(tag, str(count)) for tag, count in tags[:MAX_TAGS]], visible=bool(tags)),
            shown["activation text"],
            # a weight outside the slider's 0..2 widens it instead of being clamped by the browser
            gr.update(value=weight, minimum=min(0.0, weight), maximum=max(2.0, weight)),
            shown["negative text"],
            gr.update(visible=bool(tags)),
            gr.update(value=random_prompt(tags), visible=bool(tags)),
        ]

    def generate_random_prompt(self, name: str) -> str:
        return random_prompt(self._tags(name))

    # ---- saving ----------------------------------------------------------------------------
    def save_lora_user_metadata(  # noqa: PLR0917  (gradio passes the Save inputs positionally, as the built-in's)
        self, name: str, desc: str, sd_version: str, activation_text: str, preferred_weight: float, negative_text: str,
        notes: str,
    ) -> None:
        """Save: the keys whose value differs from what the editor showed (every key when it has
        not shown this card, e.g. after a restart). Errors are shown to the user (gr.Error)."""
        try:
            values = submitted_values((desc, sd_version, activation_text, preferred_weight, negative_text, notes))
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc
        changes = edited(self.shown.get(name), values)
        if changes:
            self.write_user_metadata(name, changes)
        self.shown[name] = {**self.shown.get(name, values), **changes}

    def write_user_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        """Set the keys of `metadata` in `<stem>.json` as it is on disk now, keeping every other
        key, written as A1111 writes it (JSON, indent 4, UTF-8 unescaped) but atomically; through
        the library when it holds the file, so that its cards (and the gallery's) follow."""
        item = self._item(name)
        filename = item.get("filename")
        if not filename:
            raise gr.Error(f"{name}: no such card; refresh the page")
        library: Any = getattr(getattr(self.page, "runtime", None), "library", None)
        entry = library.get(filename) if library is not None else None
        try:
            if entry is not None:
                saved = dict(library.write_user_metadata(entry, metadata).user)
            else:
                saved = sidecars.write_user_metadata(Path(filename), metadata)
        except (LoraPromptError, OSError) as exc:
            raise gr.Error(f"{name}: not saved: {exc}") from exc
        item["user_metadata"] = saved
        lister = getattr(self.page, "lister", None)  # A1111's cache of folder listings
        if lister is not None:
            lister.update_file_entry(str(self._json_path(name)))

    # ---- layout ----------------------------------------------------------------------------
    def create_extra_default_items_in_left_column(self) -> None:
        self.select_sd_version = gr.Dropdown(list(SD_CHOICES), value="Unknown", label="Stable Diffusion version",
                                             interactive=True)

    def create_editor(self) -> None:
        self.create_default_editor_elems()
        self.taginfo = gr.HighlightedText(label="Training dataset tags")
        self.edit_activation_text = gr.Text(label="Activation text", info="Will be added to prompt along with Lora")
        self.slider_preferred_weight = gr.Slider(label="Preferred weight", info="Set to 0 to disable", minimum=0.0,
                                                 maximum=2.0, step=0.01)
        self.edit_negative_text = gr.Text(label="Negative prompt", info="Will be added to negative prompts")
        with gr.Row() as self.row_random_prompt:
            with gr.Column(scale=8):
                self.random_prompt = gr.Textbox(label="Random prompt", lines=4, max_lines=4, interactive=False)
            with gr.Column(scale=1, min_width=120):
                generate = gr.Button("Generate", size="lg", scale=1)
        self.edit_notes = gr.TextArea(label="Notes", lines=4)

        generate.click(fn=self.generate_random_prompt, inputs=[self.edit_name_input], outputs=[self.random_prompt],
                       show_progress=False)
        self.taginfo.select(fn=select_tag, inputs=[self.edit_activation_text], outputs=[self.edit_activation_text],
                            show_progress=False)
        self.create_default_buttons()

        self.button_edit.click(fn=self.put_values_into_components, inputs=[self.edit_name_input],
                               outputs=self.viewed_components()).then(
            fn=lambda: gr.update(visible=True), inputs=[], outputs=[self.box])
        self.setup_save_handler(self.button_save, self.save_lora_user_metadata, self.edited_components())

    def viewed_components(self) -> list[Any]:
        """The edit button's outputs, in put_values_into_components' order."""
        return [self.edit_name, self.edit_description, self.html_filedata, self.html_preview, self.edit_notes,
                self.select_sd_version, self.taginfo, self.edit_activation_text, self.slider_preferred_weight,
                self.edit_negative_text, self.row_random_prompt, self.random_prompt]

    def edited_components(self) -> list[Any]:
        """The Save handler's inputs after the card name, in user_metadata.EDITED_KEYS order."""
        return [self.edit_description, self.select_sd_version, self.edit_activation_text,
                self.slider_preferred_weight, self.edit_negative_text, self.edit_notes]


def select_tag(activation_text: str, evt: gr.SelectData) -> str:
    """A click on a training tag: toggle it in the activation text."""
    value = evt.value
    tag = value[0] if isinstance(value, (list, tuple)) else value
    return toggle_tag(activation_text, str(tag))
