"""The standalone web UI: txt2img and img2img tabs driven by `Txt2Img`, the LoRA gallery tab and the Train tab."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import LoraPromptError
from loraprompt.hosts import is_loopback
from loraprompt.models import LoadedModel
from loraprompt.models.clip_skip import clip_skip_limit
from loraprompt.models.samplers import model_shift
from loraprompt.ui.dit_prompt import has_distilled_guidance
from loraprompt.ui.forms import Form, prompt_row, result_images, results, sampling, user_error
from loraprompt.ui.gallery import PromptTarget
from loraprompt.ui.hires import HIRES_UPSCALERS, IMAGE_UPSCALERS, HiresOptions
from loraprompt.ui.img2img import RESIZE_MODES
from loraprompt.ui.paste import PASTE_EXTRAS, hash_lookup, paste_extras, paste_values, png_infotext  # noqa: F401 (hash_lookup: re-export)
from loraprompt.ui.resume import Tasks
from loraprompt.ui.send import image_to_send, selected_js
from loraprompt.ui.txt2img import Txt2Img, Txt2ImgRequest
from loraprompt.ui.xy_grid import COLUMN_KINDS, StrengthGrid, axis_choices, parse_values, render_strength_grid

RENDER_IMG2IMG = """() => {
  const root = (document.querySelector("gradio-app") || {}).shadowRoot || document;
  const open = root.querySelector("#lp-img2img-tab-button"), back = root.querySelector("#lp-txt2img-tab-button");
  if (!open || !back || root.querySelector("#lp-i2i-prompt")) return;
  open.click();
  let tries = 0;
  const wait = () => (root.querySelector("#lp-i2i-prompt") || ++tries > 50) ? back.click() : setTimeout(wait, 20);
  wait();
}"""

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


def _gallery(engine: Txt2Img, targets: list[Any], thumb_dir: Path | None) -> Any:
    """The LoRA gallery tab (loraprompt.ui.gallery); card clicks write into the chosen tab's prompt."""
    import gradio as gr

    from loraprompt.ui.gallery import build_gallery_tab

    with gr.Tab("LoRA gallery", elem_id="lp-gallery-tab"):
        # the family follows the loaded model, which the checkpoint dropdown can change
        return build_gallery_tab(engine.library, targets, loaded_family=lambda: engine.model.family, thumb_dir=thumb_dir)


ModelLoader = Callable[[], LoadedModel]
MODEL_FIELDS = ("sampler", "distilled-cfg", "shift", "cfg", "clip-skip")  # what `model_fields` sets, in this order
API_FIELDS = ("prompt", "negative", "sampler", "steps", "width", "height", "cfg", "seed", "clip-skip")


def heading(model: LoadedModel) -> str:
    return f"## loraprompt · model: {_code(model.name)} ({model.family})"


def model_fields(engine: Txt2Img) -> dict[str, dict[str, Any]]:
    """What the loaded model decides in the form: the sampler list (flow-matching samplers for
    SD3/Flux), Flux-dev's distilled CFG and SD3's shift (shown only for those models), the CFG
    scale a model starts with (1 on Flux: it is distilled, true CFG is off) and the deepest clip skip."""
    model = engine.model
    labels = [s.label for s in engine.samplers]
    shift = model_shift(model.pipe.scheduler.config) if model.family in ("sd3", "flux") else None
    top = clip_skip_limit(model)
    return {
        "sampler": {"choices": labels, "value": labels[0]},
        "distilled-cfg": {"visible": model.family == "flux" and has_distilled_guidance(model.pipe)},
        "shift": {"visible": shift is not None, "value": shift or 3.0},
        "cfg": {"value": 1.0 if model.family == "flux" else 7.0},
        # as far as the APIs and the engine allow; kept on a switch (as A1111 keeps it), unless only 1 is
        # left (SD3/Flux): then 1, not editable (gradio's slider needs a maximum above its minimum)
        "clip-skip": {"maximum": max(2, top), "interactive": top > 1, **({"value": 1} if top == 1 else {})},
        # SD3/Flux upscale the decoded image only (their packed latents are not resized)
        "hr-upscaler": {"choices": list(IMAGE_UPSCALERS), "value": "Lanczos"} if model.family in ("sd3", "flux")
        else {"choices": list(HIRES_UPSCALERS), "value": "Latent"},
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
              checkpoints: dict[str, ModelLoader] | None = None, *, local_paths: bool = True) -> tuple[Any, Any]:
    """The gradio Blocks around `engine` and its gallery tab (whose routes need mounting).
    `checkpoints` (name -> loader) fills the checkpoint dropdown; it should hold the loaded model
    under `engine.model.name` (so a failed switch can load it again), which is listed first.
    `local_paths=False` (served beyond loopback): no field takes a path on the server's disk."""
    import gradio as gr
    from PIL import Image

    model = engine.model
    choices = dict(checkpoints or {})
    # gradio 6 takes the page's CSS at mount time, gradio 4 and 5 in Blocks
    styling: dict[str, Any] = {"css": CSS} if _gradio_major() < 6 else {}
    txt, i2i = Form(), Form("i2i-")
    initial = model_fields(engine)
    field = txt.add

    with gr.Blocks(title="loraprompt", analytics_enabled=False, **styling) as app:
        with gr.Row():
            title = gr.Markdown(heading(model), elem_id="lp-heading")
            checkpoint = gr.Dropdown([model.name, *(c for c in choices if c != model.name)], value=model.name,
                                     label="Checkpoint", elem_id="lp-checkpoint", visible=bool(choices),
                                     interactive=True)
        demo_notice = gr.Markdown(DEMO_NOTICE if model.is_demo else "", elem_id="lp-demo-notice", visible=model.is_demo)
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="lp-txt2img-tab"):
                prompt_row(txt)
                with gr.Row():
                    with gr.Column():
                        sampling(txt, model, initial)
                        with gr.Accordion("Hires. fix", open=False, elem_id="lp-hires-box") as hires_box:
                            field(gr.Checkbox(False, label="Enable hires fix", elem_id="lp-hires"))
                            with gr.Row():
                                field(gr.Dropdown(label="Upscaler", elem_id="lp-hr-upscaler", **initial["hr-upscaler"]))
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
                        with gr.Accordion("X/Y strength grid", open=False, elem_id="lp-xy-box") as xy_box:
                            lora_names, first_lora, second_lora = axis_choices(engine.library)
                            xy_lora = field(gr.Dropdown(lora_names, value=first_lora, label="LoRA (rows)",
                                                        allow_custom_value=True, elem_id="lp-xy-lora"))
                            field(gr.Textbox("0, 0.25, 0.5, 0.75, 1", label="Its weights (rows): 0, 0.5, 1 or 0-1 (+0.25)",
                                             elem_id="lp-xy-weights"))
                            field(gr.Radio(list(COLUMN_KINDS), value=COLUMN_KINDS[0], label="Columns",
                                           elem_id="lp-xy-columns"))
                            field(gr.Textbox("-1, -1, -1", label="Seeds (columns; -1: random)", elem_id="lp-xy-seeds"))
                            with gr.Row():
                                xy_lora2 = field(gr.Dropdown(lora_names, value=second_lora, label="Second LoRA (columns)",
                                                             allow_custom_value=True, elem_id="lp-xy-lora2"))
                                field(gr.Textbox("0, 0.5, 1", label="Its weights (columns)", elem_id="lp-xy-weights2"))
                            xy_generate = gr.Button("Generate X/Y grid", elem_id="lp-xy-generate")
                        with gr.Accordion("Paste generation parameters", open=False):
                            pasted = gr.Textbox(label="Infotext", lines=4, elem_id="lp-paste-text")
                            png = gr.File(label="…or drop a PNG made by loraprompt or Automatic1111",
                                          file_types=[".png"], type="filepath", elem_id="lp-paste-png")
                            paste = gr.Button("Apply to the fields", elem_id="lp-paste")
                    with gr.Column():
                        results(txt)
                        send = gr.Button("Send to img2img", elem_id="lp-send-to-img2img")
            with gr.Tab("img2img", id="img2img", elem_id="lp-img2img-tab"):
                prompt_row(i2i)
                with gr.Row():
                    with gr.Column():
                        i2i.add(gr.Image(label="Init image", type="pil", sources=["upload", "clipboard"],
                                         image_mode="RGBA", elem_id="lp-i2i-init-image"))  # flattened on white, as A1111
                        i2i.add(gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                         elem_id="lp-i2i-resize-mode"))
                        sampling(i2i, model, initial, after_cfg=lambda form: form.add(gr.Slider(
                            0.01, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id="lp-i2i-denoising")))
                    with gr.Column():
                        results(i2i)
            gallery = _gallery(engine, [
                PromptTarget("txt2img", txt.fields["prompt"], txt.fields["negative"], result_images(txt)),
                PromptTarget("img2img", i2i.fields["prompt"], i2i.fields["negative"], result_images(i2i))], thumb_dir)
            from loraprompt.ui.train_tab import add_train_tab

            add_train_tab(engine, thumb_dir.parent if thumb_dir else None, local_paths=local_paths)
        def handler(form: Form, img2img: bool) -> tuple[list[Any], Any]:
            """The inputs of a tab's Generate (the first web UI's nine first) and its handler."""
            keys = [*API_FIELDS, *(k for k in form.fields if k not in API_FIELDS)]

            def run(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
                named = dict(zip(keys, values))
                if img2img and named.get("init-image") is None:
                    raise user_error("img2img needs an init image: upload one, or use Send to img2img under a txt2img result")
                progress(0, desc="Patching LoRAs")
                try:
                    request = build_request(named)
                    result = engine.generate(request, on_step=lambda i, total: progress((i, total), desc="Sampling"))
                except (LoraPromptError, ValueError) as exc:
                    raise user_error(str(exc)) from exc
                many = len(result.images) > 1
                # an image an Interrupt or a Skip cut short is shown, not saved (as in A1111): gradio serves it
                shown = (result.grid_path or result.grid) if many else (result.path or result.image)
                images = [str(g.path) if g.path else g.image for g in result.images]
                paths = [str(g.path) for g in result.images if g.path]
                return (str(shown) if isinstance(shown, Path) else shown, gr.update(value=images if many else None, visible=many),
                        result.infotext, "\n".join(([str(result.grid_path)] if many and result.grid_path else []) + paths),
                        format_diagnostics(result.diagnostics, result.applied))

            return [form.fields[k] for k in keys], run

        inputs, run = handler(txt, img2img=False)
        outputs = txt.results
        i2i_inputs, run_i2i = handler(i2i, img2img=True)
        keys = [*API_FIELDS, *(k for k in txt.fields if k not in API_FIELDS)]

        def run_grid(*values: Any, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            named = dict(zip(keys, values))
            progress(0, desc="Patching LoRAs")
            try:
                request = build_request(named)
                spec = build_strength_grid(named)
                grid = render_strength_grid(engine, request, spec,
                                            on_step=lambda i, total: progress((i, total), desc="Sampling the grid"))
            except (LoraPromptError, ValueError) as exc:
                raise user_error(str(exc)) from exc
            applied = grid.cells[0].applied if grid.cells else []
            return (str(grid.path), gr.update(value=[str(c.path) if c.path else c.image for c in grid.cells], visible=True), grid.infotext,
                    str(grid.path), format_diagnostics(grid.diagnostics, applied))

        def send_to_img2img(saved: str, infotext: str, batch: list[Any] | None, shown: str | None,
                            index: Any) -> tuple[Any, ...]:
            """A1111's "Send to img2img": the image selected in the batch gallery, else the first of the
            txt2img result (loraprompt.ui.send), and the parameters it was made with, then the img2img tab."""
            chosen = image_to_send(saved, infotext, batch, index, engine.outputs_dir, shown=shown)
            if chosen is None:
                raise user_error("Generate an image first: Send to img2img sends the txt2img result")
            values = list(paste_values(chosen[1], engine.library, labels()))
            with Image.open(chosen[0]) as sent:  # the image's own size, as A1111 sends it ("Size" is the first pass's),
                values[4], values[5] = (max(8, round(side / 8) * 8) for side in sent.size)  # to the sliders' 8
            return (str(chosen[0]), *values, gr.Tabs(selected="img2img"))

        current = [model.name]

        def labels() -> list[str]:
            return [s.label for s in engine.samplers]  # the loaded model's samplers

        def switch(name: str) -> tuple[Any, ...]:
            if name == current[0]:
                return (gr.update(),) * (3 + len(MODEL_FIELDS) * 2)
            previous, loader = current[0], choices.get(name)
            if loader is None or previous not in choices:
                raise user_error(f"checkpoint {name!r} is not in the list; restart with --checkpoint-dir")
            try:
                loaded = engine.switch_model(loader, choices[previous])
            except (LoraPromptError, OSError, ValueError) as exc:
                raise gr.Error(f"{name}: {exc} ({previous} is loaded again)") from exc
            current[0] = name
            now = model_fields(engine)
            return (heading(loaded), gr.update(value=DEMO_NOTICE if loaded.is_demo else "", visible=loaded.is_demo),
                    *(gr.update(**now[k]) for _ in (txt, i2i) for k in MODEL_FIELDS), gr.update(**now["hr-upscaler"]))

        # a page reloaded (or opened in another tab) while a generation runs picks it back up
        tasks = Tasks(gr.Textbox("", visible=False, label="Task id (optional: a page that reloads follows it)"))
        for form, handle, ins, outs, api in ((txt, run, inputs, outputs, "generate"),
                                             (i2i, run_i2i, i2i_inputs, i2i.results, "img2img")):
            kind, queued = "img2img" if form is i2i else "txt2img", {"concurrency_limit": 1, "concurrency_id": "generate"}
            tasks.event(form.parts["generate"].click, handle, ins, outs, kind=kind, api_name=api, **queued)
            tasks.event(form.fields["prompt"].submit, handle, ins, outs, kind=kind, api_name=False, **queued)
            form.parts["interrupt"].click(engine.interrupt, None, None, queue=False)
            form.parts["skip"].click(engine.skip, None, None, queue=False)
            tasks.resume_on_load(app, kind, outs)
        # the first web UI's API, /run with its nine parameters, for scripts written against it
        legacy = gr.Button(visible=False, elem_id="lp-run-api")
        legacy.click(run, inputs[:len(API_FIELDS)], outputs, concurrency_limit=1, concurrency_id="generate",
                     api_name="run")
        def xy_refresh(lora: str | None, lora2: str | None) -> tuple[Any, Any]:
            """The axes' LoRA lists from the library as it is now (a LoRA added while the UI runs). A
            value is sent only to an empty axis: one the user picks while this runs (the accordion's
            expand fires it) must not be put back to the value the event carried."""
            names, first, second = axis_choices(engine.library, (lora, lora2))
            rows, columns = (gr.update(choices=names) if was else gr.update(choices=names, value=now)
                             for was, now in ((lora, first), (lora2, second)))
            return rows, columns

        # gradio builds a tab's contents when it is first opened, and the gallery writes into the
        # img2img prompt box ("No prompt box to insert into" until a visit): open it once at load
        app.load(None, js=RENDER_IMG2IMG)
        for event in (app.load, xy_box.expand):
            event(xy_refresh, [xy_lora, xy_lora2], [xy_lora, xy_lora2], queue=False, api_visibility="private")
        tasks.event(xy_generate.click, run_grid, inputs, outputs, kind="txt2img", concurrency_limit=1,
                    concurrency_id="generate", api_name="xy_grid")
        send.click(send_to_img2img, [txt.parts["saved"], txt.parts["infotext"], txt.parts["batch"], txt.parts["image"],
                                     gr.Number(-1, visible=False)],
                   [i2i.fields["init-image"], *(i2i.fields[k] for k in API_FIELDS), tabs], js=selected_js(5),
                   api_visibility="private")
        checkpoint.change(switch, [checkpoint], [title, demo_notice, *(f.fields[k] for f in (txt, i2i) for k in MODEL_FIELDS),
                                           txt.fields["hr-upscaler"]],
                          concurrency_limit=1, concurrency_id="generate")
        png.upload(png_infotext, [png], [pasted])
        # txt2img's paste: its own fields, and img2img's denoising strength (where A1111 keeps it)
        # and the Hires. fix accordion opens when the paste turns hires fix on (it would hide that)
        def apply_paste(t: str) -> tuple[Any, ...]:
            if not (t or "").strip():  # "" is a prompt without parameters: it would empty both prompts
                raise user_error("Nothing to apply: paste generation parameters (or drop a PNG) in the box first")
            extras = paste_extras(t)
            return (*paste_values(t, engine.library, labels()), *extras,
                    gr.Accordion(open=True) if extras[0] is True else gr.update())

        paste.click(apply_paste, [pasted],
                    [*(txt.fields[k] for k in API_FIELDS), *(txt.fields[k] if k in txt.fields else i2i.fields[k] for k in PASTE_EXTRAS),
                     hires_box])
    return app, gallery


def serve(engine: Txt2Img, host: str, port: int, allowed: list[str], thumb_dir: Path | None = None, *,
          checkpoints: dict[str, ModelLoader] | None = None) -> None:
    """Serve the UI and the gallery's routes on host:port until interrupted."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    blocks, gallery = build_app(engine, thumb_dir, checkpoints, local_paths=is_loopback(host))
    app = FastAPI()
    gallery.mount(app)
    from loraprompt.serve.app import mount_api

    mount_api(app, engine)  # /sdapi/v1/* and /predictions on the same model queue
    styling: dict[str, Any] = {"css": CSS} if _gradio_major() >= 6 else {}
    app = gr.mount_gradio_app(app, blocks, path="/", allowed_paths=allowed, show_error=True, **styling)
    print(f"loraprompt webui: http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
