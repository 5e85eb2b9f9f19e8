"""The parts of a generation tab (txt2img, img2img), built once per tab: the prompt row, the
sampling settings and the result column. A tab's components are keyed by their elem_id without
`lp-` and the tab's prefix, so one `build_request` reads either tab's values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraprompt.models import LoadedModel
from loraprompt.ui.request_check import MAX_BATCH_COUNT, MAX_BATCH_SIZE

# the result column's components, in the order a generation handler returns their values
RESULTS = ("image", "batch", "infotext", "saved", "diagnostics")


@dataclass
class Form:
    """One tab's components: `fields` are the inputs a generation reads (by key), `parts` the
    buttons and outputs (by the same kind of key). txt2img's prefix is "" (its elem_ids predate
    img2img's tab and scripts use them), img2img's is "i2i-"."""

    prefix: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def elem_id(self, key: str) -> str:
        return f"lp-{self.prefix}{key}"

    def add(self, component: Any) -> Any:
        """Register an input component under its elem_id's key."""
        self.fields[component.elem_id.removeprefix(f"lp-{self.prefix}")] = component
        return component

    def part(self, component: Any) -> Any:
        """Register a button or output component under its elem_id's key."""
        self.parts[component.elem_id.removeprefix(f"lp-{self.prefix}")] = component
        return component

    @property
    def results(self) -> list[Any]:
        return [self.parts[key] for key in RESULTS]


def prompt_row(form: Form) -> None:
    """Prompt and negative prompt, with Generate, Interrupt and Skip beside them."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=4):
            form.add(gr.Textbox(label="Prompt", lines=3, elem_id=form.elem_id("prompt"),
                                placeholder="a photo of a cat <lora:name:0.8>"))
            form.add(gr.Textbox(label="Negative prompt", lines=2, elem_id=form.elem_id("negative")))
        with gr.Column(scale=1, min_width=160):
            form.part(gr.Button("Generate", variant="primary", elem_id=form.elem_id("generate")))
            with gr.Row():
                form.part(gr.Button("Interrupt", elem_id=form.elem_id("interrupt"), min_width=60))
                form.part(gr.Button("Skip", elem_id=form.elem_id("skip"), min_width=60))


def sampling(form: Form, model: LoadedModel, initial: dict[str, dict[str, Any]], *, after_cfg: Any = None) -> None:
    """Sampler, steps, size with batch count and size, CFG scale (Flux's distilled CFG and SD3/Flux's
    shift beside it, shown for those models), then `after_cfg(form)` (img2img puts its denoising
    strength there), seed and clip skip. `initial`: what the loaded model sets (webui.model_fields)."""
    import gradio as gr

    eid = form.elem_id
    form.add(gr.Dropdown(initial["sampler"]["choices"], value=initial["sampler"]["value"], label="Sampler",
                         elem_id=eid("sampler")))
    form.add(gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id=eid("steps")))
    default = 256 if model.is_demo else (1024 if model.family in ("sdxl", "sd3", "flux") else 512)
    with gr.Row():
        form.add(gr.Slider(64, 2048, value=default, step=8, label="Width", elem_id=eid("width")))
        form.add(gr.Slider(1, MAX_BATCH_COUNT, value=1, step=1, label="Batch count", elem_id=eid("batch-count")))
    with gr.Row():
        form.add(gr.Slider(64, 2048, value=default, step=8, label="Height", elem_id=eid("height")))
        form.add(gr.Slider(1, MAX_BATCH_SIZE, value=1, step=1, label="Batch size", elem_id=eid("batch-size")))
    form.add(gr.Slider(1.0, 30.0, value=initial["cfg"]["value"], step=0.5, label="CFG scale", elem_id=eid("cfg")))
    with gr.Row():
        form.add(gr.Slider(0.0, 30.0, value=3.5, step=0.1, label="Distilled CFG Scale", elem_id=eid("distilled-cfg"),
                           **initial["distilled-cfg"]))
        form.add(gr.Slider(0.1, 10.0, step=0.1, label="Shift", elem_id=eid("shift"), **initial["shift"]))
    if after_cfg is not None:
        after_cfg(form)
    form.add(gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id=eid("seed")))
    form.add(gr.Slider(1, step=1, label="Clip skip (on SDXL: CLIP-L only)", elem_id=eid("clip-skip"), **initial["clip-skip"]))


def results(form: Form) -> None:
    """The result image, the batch's images, the infotext, where the files went and the diagnostics."""
    import gradio as gr

    eid = form.elem_id
    form.part(gr.Image(label="Result", type="filepath", format="png", interactive=False, elem_id=eid("image")))
    form.part(gr.Gallery(label="Images of the batch", visible=False, columns=4, height="auto", elem_id=eid("batch")))
    form.part(gr.Textbox(label="Generation parameters (PNG infotext)", lines=4, interactive=False,
                         elem_id=eid("infotext")))
    form.part(gr.Textbox(label="Saved to", interactive=False, elem_id=eid("saved")))
    form.part(gr.Markdown(elem_id=eid("diagnostics")))


def result_images(form: Form) -> tuple[str, ...]:
    """CSS selectors of the images `results` shows, for the gallery's "Replace preview": the batch
    image selected in the gallery, else the result (the image, or a batch's grid)."""
    batch, image = f"#{form.elem_id('batch')}", f"#{form.elem_id('image')}"
    return (f"{batch} .thumbnail-item.selected img", f"{batch} button.selected img", f"{image} img")


def user_error(message: str) -> Exception:
    """A gradio error for something the user can fix ("Generate an image first"): shown in the
    page, and on gradio 5+ not printed as a traceback in the server log, which is for faults."""
    import inspect

    import gradio as gr

    quiet = "print_exception" in inspect.signature(gr.Error.__init__).parameters
    return gr.Error(message, print_exception=False) if quiet else gr.Error(message)
