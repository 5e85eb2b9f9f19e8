"""Run by a gradio interpreter (current or A1111's 3.41.2): serve the LoRA tab's notice Markdown, as
the tab shows it, on 127.0.0.1. Usage: ROOT PORT."""

from __future__ import annotations

import sys
from pathlib import Path

root, port = Path(sys.argv[1]), int(sys.argv[2])
sys.path.insert(0, str(root))
from tests.extension.glue import load_glue  # noqa: E402

load_glue(root)

import gradio as gr  # noqa: E402
from loraprompt_a1111.tab import notice  # noqa: E402

with gr.Blocks() as demo:
    for handles in (True, False):
        for builtin in (True, False):
            gr.Markdown(notice(handles, builtin), elem_classes=["lp-notice"])
print(f"serving notices (gradio {gr.__version__})", flush=True)
demo.launch(server_name="127.0.0.1", server_port=port)
