"""The "LoRA" tab: loraprompt's gallery (virtualised cards, strengths, metadata editor) inside A1111.

Only gradio module of the glue. Card clicks write into A1111's own prompt boxes (by elem_id); the
gallery's script and style are added by javascript/loraprompt.js, and its routes are mounted on
A1111's app when it starts (callbacks.app_started).
"""

from __future__ import annotations

import re
from typing import Any

from . import coexist, webui

TAB_ID = "loraprompt"
TARGETS = (("txt2img", "txt2img_prompt", "txt2img_neg_prompt"), ("img2img", "img2img_prompt", "img2img_neg_prompt"))


def result_images(tab: str) -> tuple[str, ...]:
    """Where A1111 (gradio 3.41) shows a tab's results, for the gallery's "Replace preview": the
    selected image (a thumbnail, or the one shown large), else the first (the grid of a batch)."""
    gallery = f"#{tab}_gallery"
    return (f"{gallery} .thumbnail-item.selected img", f"{gallery} .preview img", f"{gallery} .thumbnail-item img")


# Tags, and tag arguments such as `unet=0@0,1@0.5` (which Markdown turns into a mailto: link)
_LITERAL = re.compile(r"<\w+:[^>]*>|\b\w+=[\w.@]*(?:,[\w.@]+)*")


def notice(handles_tags: bool, builtin: bool) -> str:
    """Who applies <lora:...> tags, in one Markdown paragraph for the top of the tab."""
    if handles_tags:
        text = coexist.NOTICE if builtin else "loraprompt handles <lora:...> and <lyco:...> tags."
    elif builtin:
        text = "A1111's built-in Lora extension handles <lora:...> tags; this gallery only inserts them."
    else:
        text = ("Nothing handles <lora:...> tags: A1111's built-in Lora extension is disabled and "
                "'Handle <lora:...> tags with loraprompt' is off (Settings > loraprompt).")
    return _LITERAL.sub(lambda m: f"`{m.group(0)}`", text)  # code spans: Markdown leaves them as written


def build_tab(state: Any) -> list[tuple[Any, str, str]]:
    """Build the tab's Blocks; returns A1111's on_ui_tabs list [(blocks, title, elem_id)]."""
    import gradio as gr

    from loraprompt.ui.gallery import PromptTarget, build_gallery_tab

    targets = [PromptTarget(label, prompt, negative, result_images(label)) for label, prompt, negative in TARGETS]
    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.Markdown(notice(state.handles_tags, coexist.builtin_enabled()), elem_id=f"{TAB_ID}_notice")
        state.gallery = build_gallery_tab(
            state.runtime.library,
            targets,
            lambda: webui.model_family(webui.loaded_model()),
            thumb_dir=webui.cache_dir(),
            load_script=False,
            elem_id=f"{TAB_ID}_gallery",
            builtin_names=lambda: not state.handles_tags,  # then the built-in resolves the names cards insert
        )
    return [(blocks, "LoRA", TAB_ID)]
