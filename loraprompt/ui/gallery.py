"""The gallery tab: LoRA cards inside any gr.Blocks, on gradio 3.41 (Automatic1111) and current gradio.

The tab is one HTML element that `static/gallery.js` turns into a virtualised card grid; the data
and the actions come from the routes of `routes.py`, which the caller mounts on the app's FastAPI
(`GalleryTab.mount(app)`, e.g. in A1111's `on_app_started`). The script is loaded by a page-load
event of the enclosing Blocks, or by the host (A1111 loads an extension's `javascript/*.js`).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraprompt.library import Library
from loraprompt.ui.gallery_service import GalleryService
from loraprompt.ui.routes import DEFAULT_PREFIX, SCRIPTS, STATIC_DIR, mount_gallery_routes


@dataclass(frozen=True)
class PromptTarget:
    """A prompt box (and optional negative-prompt box) a card click writes into; a gradio
    component or the elem_id of one that exists elsewhere on the page (e.g. "txt2img_prompt")."""

    label: str
    prompt: Any
    negative: Any = None
    # CSS selectors of the <img> elements showing this tab's results, tried in order (a selected
    # image first): the editor's "Replace preview" uses the first one found
    images: tuple[str, ...] = ()


@dataclass
class GalleryTab:
    """What `build_gallery_tab` made: the HTML component, the service behind it and its routes."""

    html: Any
    service: GalleryService
    prefix: str

    def mount(self, app: Any) -> None:
        """Serve this gallery's routes from `app` (the FastAPI app that serves the Blocks)."""
        mount_gallery_routes(app, self.service, self.prefix)


def _gradio_major() -> int:
    import gradio as gr

    return int(gr.__version__.split(".")[0])


def _elem_id(component: Any) -> str | None:
    if component is None or isinstance(component, str):
        return component
    if not getattr(component, "elem_id", None):
        component.elem_id = f"lp-target-{component._id}"
    return str(component.elem_id)


def _targets(prompt_targets: Sequence[Any] | Any) -> list[dict[str, Any]]:
    if not isinstance(prompt_targets, (list, tuple)):
        prompt_targets = [prompt_targets]
    out = []
    for i, target in enumerate(prompt_targets):
        if not isinstance(target, PromptTarget):
            target = PromptTarget(getattr(target, "label", None) or f"Prompt {i + 1}", target)
        out.append({"label": str(target.label), "prompt": _elem_id(target.prompt), "negative": _elem_id(target.negative),
                    "images": list(target.images)})
    return out


def static_version() -> str:
    """A short hash of the gallery's script and style, to bust browser caches after an update."""
    digest = hashlib.sha256()
    for name in (*SCRIPTS, "gallery.css"):
        digest.update((STATIC_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def loader_js(prefix: str = DEFAULT_PREFIX) -> str:
    """The page-load snippet that adds the gallery's stylesheet and its scripts, in order (inserted
    scripts with async=false run in insertion order), once per page."""
    base = json.dumps(prefix.strip("/") + "/static/")
    version = json.dumps("?v=" + static_version())
    return (
        "() => { const base = " + base + ", v = " + version + ";"
        " if (!document.querySelector('link[data-lp-gallery]')) {"
        " const l = document.createElement('link'); l.rel = 'stylesheet'; l.href = base + 'gallery.css' + v;"
        " l.dataset.lpGallery = '1'; document.head.appendChild(l); }"
        " if (!window.loraPromptGallery && !document.querySelector('script[data-lp-gallery]')) {"
        " for (const name of " + json.dumps(list(SCRIPTS)) + ") {"
        " const s = document.createElement('script'); s.src = base + name + v; s.async = false;"
        " s.dataset.lpGallery = '1'; document.head.appendChild(s); } } }"
    )


def root_html(prefix: str, targets: list[dict[str, Any]], poll_seconds: float) -> str:
    """The element the script mounts the gallery into (all attribute values escaped)."""
    attrs = {
        "data-api": prefix.strip("/"),
        "data-targets": json.dumps(targets),
        "data-poll": str(int(poll_seconds * 1000)),
    }
    rendered = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    return f'<div class="lp-gallery" {rendered}><p class="lp-loading">Loading LoRA cards…</p></div>'


def build_gallery_tab(
    library: Library,
    prompt_targets: Sequence[Any] | Any = (),
    loaded_family: Callable[[], str | None] | None = None,
    *,
    thumb_dir: str | Path | None = None,
    prefix: str = DEFAULT_PREFIX,
    poll_seconds: float = 4.0,
    load_script: bool = True,
    elem_id: str = "lp-gallery",
    builtin_names: Callable[[], bool] | None = None,
) -> GalleryTab:
    """Create the gallery's components inside the current gr.Blocks (call it inside `with
    gr.Blocks()`, or inside a `gr.Tab`). `prompt_targets`: textboxes, elem_ids or PromptTargets;
    `loaded_family()`: sd1/sd2/sdxl of the loaded model, or None (asked again on every poll).
    `builtin_names()`: True when A1111's built-in Lora extension handles the tags, so cards insert
    names it resolves. Call `.mount(app)` on the result with the FastAPI app that serves the page."""
    import gradio as gr
    from gradio.context import Context

    service = GalleryService(library, loaded_family, thumb_dir, builtin_names)
    component = gr.HTML(root_html(prefix, _targets(prompt_targets), poll_seconds), elem_id=elem_id)
    if load_script:
        blocks = Context.root_block
        if blocks is None:
            raise RuntimeError("build_gallery_tab must be called inside a `with gr.Blocks():` block")
        js_arg: dict[str, Any] = {"js" if _gradio_major() >= 4 else "_js": loader_js(prefix)}
        blocks.load(None, None, None, **js_arg)
    return GalleryTab(component, service, prefix)
