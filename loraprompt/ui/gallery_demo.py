"""A small app with a prompt box, a negative prompt and the gallery tab, served on loopback.

`python -m loraprompt.ui.gallery_demo --lora-dir models/Lora --port 7861` shows the gallery on its
own; the tests drive it with a browser under gradio 3.41 and current gradio. The "loaded model"
radio stands in for a model switch, so the base-model filter can be seen following it.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

FAMILIES = ("none", "sd1", "sd2", "sdxl", "sd3", "flux")


def build_demo(library: Any, family: str = "none", thumb_dir: str | Path | None = None, poll_seconds: float = 4.0) -> tuple[Any, Any]:
    """The demo Blocks and its GalleryTab (not yet mounted on an app)."""
    import gradio as gr

    from loraprompt.ui.gallery import PromptTarget, build_gallery_tab

    loaded = {"family": family}
    with gr.Blocks(title="loraprompt gallery demo") as demo:
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", elem_id="demo_prompt", lines=3)
            negative = gr.Textbox(label="Negative prompt", elem_id="demo_negative", lines=3)
        model = gr.Radio(list(FAMILIES), value=family, label="Loaded model family", elem_id="demo_family")
        model.change(lambda value: loaded.update(family=value), inputs=model, outputs=None)
        with gr.Row():
            show = gr.Button("Show the prompt as the server receives it", elem_id="demo_show")
            received = gr.Textbox(label="Received by the server", elem_id="demo_received", interactive=False)
        show.click(lambda p, n: f"{p} || {n}", inputs=[prompt, negative], outputs=received)
        with gr.Tab("LoRA gallery"):
            tab = build_gallery_tab(
                library, [PromptTarget("Prompt", prompt, negative)],
                loaded_family=lambda: None if loaded["family"] == "none" else loaded["family"],
                thumb_dir=thumb_dir, poll_seconds=poll_seconds,
            )
    return demo, tab


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(dirs: list[str], port: int, family: str, cache_dir: str | None, poll_seconds: float) -> None:
    """Build the demo and serve it on 127.0.0.1:`port` until interrupted."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from loraprompt.library import Library

    library = Library(dirs, cache_dir)
    thumbs = Path(cache_dir) / "thumbs" if cache_dir else None
    demo, tab = build_demo(library, family, thumbs, poll_seconds)
    app = FastAPI()
    tab.mount(app)
    if int(gr.__version__.split(".")[0]) < 4:
        demo.queue()
    app = gr.mount_gradio_app(app, demo, path="/")
    print(f"gallery demo: http://127.0.0.1:{port}/ ({len(library.entries)} LoRAs, gradio {gr.__version__})", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    """Command line: --lora-dir (repeatable), --port, --family, --cache-dir, --poll."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-dir", action="append", required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--family", choices=FAMILIES, default="none")
    parser.add_argument("--cache-dir")
    parser.add_argument("--poll", type=float, default=4.0, help="seconds between the page's state checks")
    args = parser.parse_args(argv)
    serve(args.lora_dir, args.port or free_port(), args.family, args.cache_dir, args.poll)


if __name__ == "__main__":
    main()
