"""The standalone web UI: a txt2img tab driven by `Txt2Img` and the LoRA gallery tab beside it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import LoraPromptError
from loraprompt.infotext import parse_infotext, parse_lora_hashes, remap_lora_names
from loraprompt.models.samplers import SAMPLER_LABELS
from loraprompt.ui.txt2img import Txt2Img, Txt2ImgRequest

DEMO_NOTICE = (
    "**Demo model.** This is loraprompt's built-in demo: a tiny Stable-Diffusion-shaped model with "
    "random weights. **It draws noise**, on purpose; the demo LoRAs change that noise. Everything "
    "else is real: prompt parsing, LoRA lookup, patching, infotext. Start with "
    "`loraprompt webui --checkpoint model.safetensors --lora-dir models/Lora` to draw pictures."
)
SEVERITY_MARK = {"error": "**error**", "warning": "**warning**", "info": "info"}
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
CSS = "#lp-diagnostics ul { margin: 0; } #lp-demo-notice { border-left: 4px solid #e8a33d; padding-left: 8px; }"


def _gradio_major() -> int:
    import gradio as gr

    return int(gr.__version__.split(".")[0])


def format_diagnostics(diagnostics: list[Diagnostic], applied: list[Any]) -> str:
    """Markdown for the diagnostics panel: one line per applied LoRA, then each message."""
    lines = [f"- **applied** {_code(a.name)} te={_strength(a.te)} unet={_strength(a.unet)} (hash {a.short_hash or 'unknown'})"
             for a in applied]
    for d in diagnostics:
        who = f"{_code(d.subject)}: " if d.subject else ""
        lines.append(f"- {SEVERITY_MARK.get(d.severity, d.severity)} {who}{_literal(d.message)}")
    return "\n".join(lines) if lines else "No LoRA in the prompt: the model runs unpatched."


def _literal(text: str) -> str:
    """`text` shown as written in Markdown: prompt text such as `<lora:x:abc>` is an autolink otherwise."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text).replace("\n", " ")


def _code(text: str) -> str:
    """`text` as a Markdown code span, fenced by more backticks than it holds."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"


def _strength(value: float | None) -> str:
    return "scheduled" if value is None else f"{value:g}"


def hash_lookup(library: Any) -> Any:
    """A short-hash -> local LoRA name function over the library (hashes computed lazily)."""

    def lookup(wanted: str) -> str | None:
        found = library.find_by_hash(wanted)
        return library.display_name(found[0]) if found else None

    return lookup


def paste_values(text: str, library: Any) -> tuple[Any, ...]:
    """Field values from pasted infotext, with LoRA names remapped by hash as A1111 does."""
    import gradio as gr

    fields = parse_infotext(text)
    prompt = remap_lora_names(fields["Prompt"], parse_lora_hashes(fields.get("Lora hashes", "")), hash_lookup(library))
    label = " ".join(x for x in (fields.get("Sampler"), fields.get("Schedule type")) if x)
    if label not in SAMPLER_LABELS:
        label = fields.get("Sampler", "")

    def number(key: str) -> Any:
        try:
            value = float(fields[key])
        except (KeyError, ValueError):
            return gr.update()
        return value if math.isfinite(value) else gr.update()  # float() reads "nan" and "inf"

    return (
        prompt,
        fields["Negative prompt"],
        label if label in SAMPLER_LABELS else gr.update(),
        number("Steps"),
        number("Size-1"),
        number("Size-2"),
        number("CFG scale"),
        number("Seed"),
        number("Clip skip") if "Clip skip" in fields else 1,  # A1111 omits it when it is 1
    )


def png_infotext(path: str | None) -> str:
    """The `parameters` text chunk of an uploaded PNG (empty when it has none)."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        return ""
    try:
        with Image.open(path) as image:
            return str(getattr(image, "text", {}).get("parameters", ""))
    except (OSError, UnidentifiedImageError):
        return ""


def _gallery(library: Any, prompt: Any, negative: Any, loaded_family: str, thumb_dir: Path | None) -> Any:
    """The LoRA gallery tab (loraprompt.ui.gallery); card clicks write into the txt2img prompt."""
    import gradio as gr

    from loraprompt.ui.gallery import PromptTarget, build_gallery_tab

    with gr.Tab("LoRA gallery", elem_id="lp-gallery-tab"):
        return build_gallery_tab(library, [PromptTarget("txt2img", prompt, negative)],
                                 loaded_family=lambda: loaded_family, thumb_dir=thumb_dir)


def build_app(engine: Txt2Img, thumb_dir: Path | None = None) -> tuple[Any, Any]:
    """The gradio Blocks around `engine` and its gallery tab (whose routes need mounting)."""
    import gradio as gr

    model = engine.model
    # gradio 6 takes the page's CSS at mount time, gradio 4 and 5 in Blocks
    styling: dict[str, Any] = {"css": CSS} if _gradio_major() < 6 else {}
    with gr.Blocks(title="loraprompt", analytics_enabled=False, **styling) as app:
        gr.Markdown(f"## loraprompt · model: {_code(model.name)} ({model.family})")
        if model.is_demo:
            gr.Markdown(DEMO_NOTICE, elem_id="lp-demo-notice")
        with gr.Tabs():
            with gr.Tab("txt2img", elem_id="lp-txt2img-tab"):
                with gr.Row():
                    with gr.Column(scale=4):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="lp-prompt",
                                            placeholder="a photo of a cat <lora:name:0.8>")
                        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="lp-negative")
                    with gr.Column(scale=1, min_width=160):
                        generate = gr.Button("Generate", variant="primary", elem_id="lp-generate")
                        interrupt = gr.Button("Interrupt", elem_id="lp-interrupt")
                with gr.Row():
                    with gr.Column():
                        sampler = gr.Dropdown(list(SAMPLER_LABELS), value=SAMPLER_LABELS[0], label="Sampler", elem_id="lp-sampler")
                        steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id="lp-steps")
                        default = 256 if model.is_demo else (1024 if model.family == "sdxl" else 512)
                        width = gr.Slider(64, 2048, value=default, step=8, label="Width", elem_id="lp-width")
                        height = gr.Slider(64, 2048, value=default, step=8, label="Height", elem_id="lp-height")
                        cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG scale", elem_id="lp-cfg")
                        seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="lp-seed")
                        clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip (SD1/SD2)", elem_id="lp-clip-skip",
                                              visible=model.family != "sdxl")
                        with gr.Accordion("Paste generation parameters", open=False):
                            pasted = gr.Textbox(label="Infotext", lines=4, elem_id="lp-paste-text")
                            png = gr.File(label="…or drop a PNG made by loraprompt or Automatic1111",
                                          file_types=[".png"], type="filepath", elem_id="lp-paste-png")
                            paste = gr.Button("Apply to the fields", elem_id="lp-paste")
                    with gr.Column():
                        image = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                         elem_id="lp-image")
                        infotext = gr.Textbox(label="Generation parameters (PNG infotext)", lines=4,
                                              interactive=False, elem_id="lp-infotext")
                        saved = gr.Textbox(label="Saved to", interactive=False, elem_id="lp-saved")
                        diagnostics = gr.Markdown(elem_id="lp-diagnostics")
            gallery = _gallery(engine.library, prompt, negative, model.family, thumb_dir)
            from loraprompt.ui.train_tab import add_train_tab

            add_train_tab(engine, thumb_dir.parent if thumb_dir else None)

        def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[str, str, str, str]:  # noqa: B008
            p, n, s, st, w, h, c, sd, cs = values
            request = Txt2ImgRequest(p, n, int(st), float(c), int(sd if sd is not None else -1), int(w), int(h), s, int(cs))
            progress(0, desc="Patching LoRAs")
            try:
                result = engine.generate(request, on_step=lambda i, total: progress((i, total), desc="Sampling"))
            except (LoraPromptError, ValueError) as exc:
                raise gr.Error(str(exc)) from exc
            return str(result.path), result.infotext, str(result.path), format_diagnostics(result.diagnostics, result.applied)

        generate.click(run, [prompt, negative, sampler, steps, width, height, cfg, seed, clip_skip],
                       [image, infotext, saved, diagnostics], concurrency_limit=1)
        prompt.submit(run, [prompt, negative, sampler, steps, width, height, cfg, seed, clip_skip],
                      [image, infotext, saved, diagnostics], concurrency_limit=1)
        interrupt.click(engine.interrupt, None, None, queue=False)
        png.upload(png_infotext, [png], [pasted])
        paste.click(lambda t: paste_values(t, engine.library), [pasted],
                    [prompt, negative, sampler, steps, width, height, cfg, seed, clip_skip])
    return app, gallery


def serve(engine: Txt2Img, host: str, port: int, allowed: list[str], thumb_dir: Path | None = None) -> None:
    """Serve the UI and the gallery's routes on host:port until interrupted."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    blocks, gallery = build_app(engine, thumb_dir)
    app = FastAPI()
    gallery.mount(app)
    from loraprompt.serve.app import mount_api

    mount_api(app, engine)  # /sdapi/v1/* and /predictions on the same model queue
    styling: dict[str, Any] = {"css": CSS} if _gradio_major() >= 6 else {}
    app = gr.mount_gradio_app(app, blocks, path="/", allowed_paths=allowed, show_error=True, **styling)
    print(f"loraprompt webui: http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
