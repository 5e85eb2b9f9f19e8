"""Run by a gradio interpreter (current or A1111's 3.41.2): serve the LoRA tab's notice Markdown, as
the tab shows it, on 127.0.0.1. Usage: ROOT PORT."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

root, port = Path(sys.argv[1]), int(sys.argv[2])
sys.path[:0] = [str(root / "tests" / "extension" / "fake_webui"), str(root)]
glue = root / "extension"
spec = importlib.util.spec_from_file_location("loraprompt_a1111", glue / "__init__.py", submodule_search_locations=[str(glue)])
assert spec is not None and spec.loader is not None
sys.modules["loraprompt_a1111"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["loraprompt_a1111"])

import gradio as gr  # noqa: E402
from loraprompt_a1111.tab import notice  # noqa: E402

with gr.Blocks() as demo:
    for handles in (True, False):
        for builtin in (True, False):
            gr.Markdown(notice(handles, builtin), elem_classes=["lp-notice"])
print(f"serving notices (gradio {gr.__version__})", flush=True)
demo.launch(server_name="127.0.0.1", server_port=port)
