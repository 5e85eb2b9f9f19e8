"""The standalone web UI: a txt2img tab driven by `Txt2Img` and the LoRA gallery tab beside it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import LoraPromptError
from loraprompt.models import LoadedModel
from loraprompt.models.samplers import model_shift
from loraprompt.ui.dit_prompt import has_distilled_guidance
from loraprompt.ui.hires import HIRES_UPSCALERS, HiresOptions
from loraprompt.ui.img2img import RESIZE_MODES
from loraprompt.ui.paste import PASTE_EXTRAS, hash_lookup, paste_extras, paste_values, png_infotext  # noqa: F401 (hash_lookup: re-export)
from loraprompt.ui.txt2img import MAX_BATCH_COUNT, MAX_BATCH_SIZE, Txt2Img, Txt2ImgRequest
from loraprompt.ui.xy_grid import COLUMN_KINDS, StrengthGrid, parse_values, render_strength_grid

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


def _gallery(engine: Txt2Img, prompt: Any, negative: Any, thumb_dir: Path | None) -> Any:
    """The LoRA gallery tab (loraprompt.ui.gallery); card clicks write into the txt2img prompt."""
    import gradio as gr

    from loraprompt.ui.gallery import PromptTarget, build_gallery_tab

    with gr.Tab("LoRA gallery", elem_id="lp-gallery-tab"):
        # the family follows the loaded model, which the checkpoint dropdown can change
        return build_gallery_tab(engine.library, [PromptTarget("txt2img", prompt, negative)],
                                 loaded_family=lambda: engine.model.family, thumb_dir=thumb_dir)


ModelLoader = Callable[[], LoadedModel]
API_FIELDS = ("prompt", "negative", "sampler", "steps", "width", "height", "cfg", "seed", "clip-skip")


def heading(model: LoadedModel) -> str:
    return f"## loraprompt · model: {_code(model.name)} ({model.family})"


def model_fields(engine: Txt2Img) -> dict[str, dict[str, Any]]:
    """What the loaded model decides in the form: the sampler list (flow-matching samplers for
    SD3/Flux), Flux-dev's distilled CFG and SD3's shift (shown only for those models), and the CFG
    scale a model starts with (1 on Flux: it is distilled, true CFG is off)."""
    model = engine.model
    labels = [s.label for s in engine.samplers]
    shift = model_shift(model.pipe.scheduler.config) if model.family in ("sd3", "flux") else None
    return {
        "sampler": {"choices": labels, "value": labels[0]},
        "distilled-cfg": {"visible": model.family == "flux" and has_distilled_guidance(model.pipe)},
        "shift": {"visible": shift is not None, "value": shift or 3.0},
        "cfg": {"value": 1.0 if model.family == "flux" else 7.0},
    }


def build_request(values: dict[str, Any]) -> Txt2ImgRequest:
    """A Txt2ImgRequest from the UI's field values (by elem_id without `lp-`)."""
    def integer(key: str, default: int) -> int:
        value = values.get(key)
        return default if value is None else int(value)

    hires = None
    if values.get("hires"):
        hires = HiresOptions(
            upscaler=values["hr-upscaler"], scale=float(values["hr-scale"]), resize_x=integer("hr-resize-x", 0),
            resize_y=integer("hr-resize-y", 0), steps=integer("hr-steps", 0),
            denoising_strength=float(values["hr-denoising"]), prompt=values.get("hr-prompt") or "",
            negative_prompt=values.get("hr-negative") or "",
        )
    return Txt2ImgRequest(
        values["prompt"], values.get("negative") or "", integer("steps", 20), float(values["cfg"]),
        integer("seed", -1), integer("width", 512), integer("height", 512), values["sampler"],
        integer("clip-skip", 1), batch_count=integer("batch-count", 1), batch_size=integer("batch-size", 1),
        hires=hires, init_image=values.get("init-image") or None,
        denoising_strength=float(values.get("denoising", 0.75)), resize_mode=values.get("resize-mode") or RESIZE_MODES[0],
        distilled_cfg_scale=float(values.get("distilled-cfg") or 3.5),
        shift=float(values["shift"]) if values.get("shift") else None,
    )


def build_strength_grid(values: dict[str, Any]) -> StrengthGrid:
    """The X/Y strength grid's settings from the UI's field values."""
    kind = values["xy-columns"]
    spec = StrengthGrid(
        lora=(values.get("xy-lora") or "").strip(),
        weights=parse_values(values.get("xy-weights") or "", "LoRA weights (rows)"),
        columns=kind,
    )
    if kind == COLUMN_KINDS[0]:
        spec.seeds = [int(v) for v in parse_values(values.get("xy-seeds") or "", "Seeds (columns)", integers=True)]
    else:
        spec.lora2 = (values.get("xy-lora2") or "").strip()
        spec.weights2 = parse_values(values.get("xy-weights2") or "", "Second LoRA weights (columns)")
    return spec


def build_app(engine: Txt2Img, thumb_dir: Path | None = None,
              checkpoints: dict[str, ModelLoader] | None = None) -> tuple[Any, Any]:
    """The gradio Blocks around `engine` and its gallery tab (whose routes need mounting).
    `checkpoints` (name -> loader) fills the checkpoint dropdown; it should hold the loaded model
    under `engine.model.name` (so a failed switch can load it again), which is listed first."""
    import gradio as gr

    model = engine.model
    choices = dict(checkpoints or {})
    # gradio 6 takes the page's CSS at mount time, gradio 4 and 5 in Blocks
    styling: dict[str, Any] = {"css": CSS} if _gradio_major() < 6 else {}
    fields: dict[str, Any] = {}
    initial = model_fields(engine)

    def field(component: Any) -> Any:
        fields[component.elem_id.removeprefix("lp-")] = component
        return component

    with gr.Blocks(title="loraprompt", analytics_enabled=False, **styling) as app:
        with gr.Row():
            title = gr.Markdown(heading(model), elem_id="lp-heading")
            checkpoint = gr.Dropdown([model.name, *(c for c in choices if c != model.name)], value=model.name,
                                     label="Checkpoint", elem_id="lp-checkpoint", visible=bool(choices),
                                     interactive=True)
        demo_notice = gr.Markdown(DEMO_NOTICE if model.is_demo else "", elem_id="lp-demo-notice", visible=model.is_demo)
        with gr.Tabs():
            with gr.Tab("txt2img", elem_id="lp-txt2img-tab"):
                with gr.Row():
                    with gr.Column(scale=4):
                        prompt = field(gr.Textbox(label="Prompt", lines=3, elem_id="lp-prompt",
                                                  placeholder="a photo of a cat <lora:name:0.8>"))
                        negative = field(gr.Textbox(label="Negative prompt", lines=2, elem_id="lp-negative"))
                    with gr.Column(scale=1, min_width=160):
                        generate = gr.Button("Generate", variant="primary", elem_id="lp-generate")
                        interrupt = gr.Button("Interrupt", elem_id="lp-interrupt")
                with gr.Row():
                    with gr.Column():
                        sampler = field(gr.Dropdown(initial["sampler"]["choices"], value=initial["sampler"]["value"],
                                                    label="Sampler", elem_id="lp-sampler"))
                        steps = field(gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id="lp-steps"))
                        default = 256 if model.is_demo else (1024 if model.family in ("sdxl", "sd3", "flux") else 512)
                        with gr.Row():
                            width = field(gr.Slider(64, 2048, value=default, step=8, label="Width", elem_id="lp-width"))
                            field(gr.Slider(1, MAX_BATCH_COUNT, value=1, step=1, label="Batch count",
                                                          elem_id="lp-batch-count"))
                        with gr.Row():
                            height = field(gr.Slider(64, 2048, value=default, step=8, label="Height", elem_id="lp-height"))
                            field(gr.Slider(1, MAX_BATCH_SIZE, value=1, step=1, label="Batch size",
                                                         elem_id="lp-batch-size"))
                        cfg = field(gr.Slider(1.0, 30.0, value=initial["cfg"]["value"], step=0.5, label="CFG scale",
                                              elem_id="lp-cfg"))
                        with gr.Row():
                            distilled = field(gr.Slider(0.0, 30.0, value=3.5, step=0.1, label="Distilled CFG Scale",
                                                        elem_id="lp-distilled-cfg", **initial["distilled-cfg"]))
                            shift = field(gr.Slider(0.1, 10.0, step=0.1, label="Shift", elem_id="lp-shift",
                                                    **initial["shift"]))
                        seed = field(gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="lp-seed"))
                        clip_skip = field(gr.Slider(1, 12, value=1, step=1, label="Clip skip (on SDXL: CLIP-L only)",
                                                    elem_id="lp-clip-skip"))
                        with gr.Accordion("Hires. fix", open=False, elem_id="lp-hires-box"):
                            field(gr.Checkbox(False, label="Enable hires fix", elem_id="lp-hires"))
                            with gr.Row():
                                field(gr.Dropdown(list(HIRES_UPSCALERS), value="Latent", label="Upscaler",
                                                  elem_id="lp-hr-upscaler"))
                                field(gr.Slider(0, 150, value=0, step=1, label="Hires steps (0: same as Steps)",
                                                elem_id="lp-hr-steps"))
                                field(gr.Slider(0.01, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                elem_id="lp-hr-denoising"))
                            with gr.Row():
                                field(gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="lp-hr-scale"))
                                field(gr.Slider(0, 2048, value=0, step=8, label="Resize width to", elem_id="lp-hr-resize-x"))
                                field(gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                                elem_id="lp-hr-resize-y"))
                            field(gr.Textbox(label="Hires prompt (empty: the prompt; its LoRA tags replace the first"
                                                   " pass's, else hr=/hrte=/hrunet= apply)", lines=2, elem_id="lp-hr-prompt"))
                            field(gr.Textbox(label="Hires negative prompt", lines=1, elem_id="lp-hr-negative"))
                        with gr.Accordion("img2img (an init image turns Generate into img2img)", open=False,
                                          elem_id="lp-img2img-box"):
                            field(gr.Image(label="Init image", type="pil", sources=["upload", "clipboard"],
                                           elem_id="lp-init-image"))
                            field(gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                           elem_id="lp-resize-mode"))
                            field(gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                            elem_id="lp-denoising"))
                        with gr.Accordion("X/Y strength grid", open=False, elem_id="lp-xy-box"):
                            lora_names = sorted({engine.library.display_name(e) for e in engine.library.entries})
                            field(gr.Dropdown(lora_names, label="LoRA (rows)", allow_custom_value=True,
                                              elem_id="lp-xy-lora"))
                            field(gr.Textbox("0, 0.25, 0.5, 0.75, 1", label="Its weights (rows): 0, 0.5, 1 or 0-1 (+0.25)",
                                             elem_id="lp-xy-weights"))
                            field(gr.Radio(list(COLUMN_KINDS), value=COLUMN_KINDS[0], label="Columns",
                                           elem_id="lp-xy-columns"))
                            field(gr.Textbox("-1, -1, -1", label="Seeds (columns; -1: random)", elem_id="lp-xy-seeds"))
                            with gr.Row():
                                field(gr.Dropdown(lora_names, label="Second LoRA (columns)", allow_custom_value=True,
                                                  elem_id="lp-xy-lora2"))
                                field(gr.Textbox("0, 0.5, 1", label="Its weights (columns)", elem_id="lp-xy-weights2"))
                            xy_generate = gr.Button("Generate X/Y grid", elem_id="lp-xy-generate")
                        with gr.Accordion("Paste generation parameters", open=False):
                            pasted = gr.Textbox(label="Infotext", lines=4, elem_id="lp-paste-text")
                            png = gr.File(label="…or drop a PNG made by loraprompt or Automatic1111",
                                          file_types=[".png"], type="filepath", elem_id="lp-paste-png")
                            paste = gr.Button("Apply to the fields", elem_id="lp-paste")
                    with gr.Column():
                        image = gr.Image(label="Result", type="filepath", format="png", interactive=False,
                                         elem_id="lp-image")
                        batch = gr.Gallery(label="Images of the batch", visible=False, columns=4, height="auto",
                                           elem_id="lp-batch")
                        infotext = gr.Textbox(label="Generation parameters (PNG infotext)", lines=4,
                                              interactive=False, elem_id="lp-infotext")
                        saved = gr.Textbox(label="Saved to", interactive=False, elem_id="lp-saved")
                        diagnostics = gr.Markdown(elem_id="lp-diagnostics")
            gallery = _gallery(engine, prompt, negative, thumb_dir)
            from loraprompt.ui.train_tab import add_train_tab

            add_train_tab(engine, thumb_dir.parent if thumb_dir else None)

        # the first nine are the first web UI's (its /run API); the new fields follow
        keys = [*API_FIELDS, *(k for k in fields if k not in API_FIELDS)]
        inputs = [fields[k] for k in keys]
        outputs = [image, batch, infotext, saved, diagnostics]

        def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            named = dict(zip(keys, values))
            progress(0, desc="Patching LoRAs")
            try:
                request = build_request(named)
                result = engine.generate(request, on_step=lambda i, total: progress((i, total), desc="Sampling"))
            except (LoraPromptError, ValueError) as exc:
                raise gr.Error(str(exc)) from exc
            many = len(result.images) > 1
            shown = result.grid_path if many and result.grid_path else result.path
            paths = [str(g.path) for g in result.images]
            return (str(shown), gr.update(value=paths if many else None, visible=many), result.infotext,
                    "\n".join(([str(result.grid_path)] if many and result.grid_path else []) + paths),
                    format_diagnostics(result.diagnostics, result.applied))

        def run_grid(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            named = dict(zip(keys, values))
            progress(0, desc="Patching LoRAs")
            try:
                request = build_request(named)
                spec = build_strength_grid(named)
                grid = render_strength_grid(engine, request, spec,
                                            on_step=lambda i, total: progress((i, total), desc="Sampling the grid"))
            except (LoraPromptError, ValueError) as exc:
                raise gr.Error(str(exc)) from exc
            applied = grid.cells[0].applied if grid.cells else []
            return (str(grid.path), gr.update(value=[str(c.path) for c in grid.cells], visible=True), grid.infotext,
                    str(grid.path), format_diagnostics(grid.diagnostics, applied))

        current = [model.name]

        def switch(name: str) -> tuple[Any, ...]:
            if name == current[0]:
                return (gr.update(),) * 6
            previous, loader = current[0], choices.get(name)
            if loader is None or previous not in choices:
                raise gr.Error(f"checkpoint {name!r} is not in the list; restart with --checkpoint-dir")
            try:
                loaded = engine.switch_model(loader, choices[previous])
            except (LoraPromptError, OSError, ValueError) as exc:
                raise gr.Error(f"{name}: {exc} ({previous} is loaded again)") from exc
            current[0] = name
            now = model_fields(engine)
            return (heading(loaded), gr.update(value=DEMO_NOTICE if loaded.is_demo else "", visible=loaded.is_demo),
                    *(gr.update(**now[k]) for k in ("sampler", "distilled-cfg", "shift", "cfg")))

        generate.click(run, inputs, outputs, concurrency_limit=1, concurrency_id="generate", api_name="generate")
        prompt.submit(run, inputs, outputs, concurrency_limit=1, concurrency_id="generate", api_name=False)
        # the first web UI's API, /run with its nine parameters, for scripts written against it
        legacy = gr.Button(visible=False, elem_id="lp-run-api")
        legacy.click(run, inputs[:len(API_FIELDS)], outputs, concurrency_limit=1, concurrency_id="generate",
                     api_name="run")
        xy_generate.click(run_grid, inputs, outputs, concurrency_limit=1, concurrency_id="generate",
                          api_name="xy_grid")
        checkpoint.change(switch, [checkpoint], [title, demo_notice, sampler, distilled, shift, cfg], concurrency_limit=1,
                          concurrency_id="generate")
        interrupt.click(engine.interrupt, None, None, queue=False)
        png.upload(png_infotext, [png], [pasted])
        paste.click(lambda t: (*paste_values(t, engine.library, [s.label for s in engine.samplers]), *paste_extras(t)),
                    [pasted],
                    [prompt, negative, sampler, steps, width, height, cfg, seed, clip_skip,
                     *(fields[key] for key in PASTE_EXTRAS)])
    return app, gallery


def serve(engine: Txt2Img, host: str, port: int, allowed: list[str], thumb_dir: Path | None = None, *,
          checkpoints: dict[str, ModelLoader] | None = None) -> None:
    """Serve the UI and the gallery's routes on host:port until interrupted."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    blocks, gallery = build_app(engine, thumb_dir, checkpoints)
    app = FastAPI()
    gallery.mount(app)
    from loraprompt.serve.app import mount_api

    mount_api(app, engine)  # /sdapi/v1/* and /predictions on the same model queue
    styling: dict[str, Any] = {"css": CSS} if _gradio_major() >= 6 else {}
    app = gr.mount_gradio_app(app, blocks, path="/", allowed_paths=allowed, show_error=True, **styling)
    print(f"loraprompt webui: http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
