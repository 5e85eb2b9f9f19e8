"""Load the extension's glue under its unique package name, as scripts/loraprompt_script.py does
inside A1111, for the scripts that other gradio interpreters run (gradio3_tab.py, notice_page.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_glue(root: Path) -> ModuleType:
    """Put the A1111 stand-in and the repository on sys.path and import `extension/` as `loraprompt_a1111`."""
    sys.path[:0] = [str(root / "tests" / "extension" / "fake_webui"), str(root)]
    glue = root / "extension"
    spec = importlib.util.spec_from_file_location("loraprompt_a1111", glue / "__init__.py",
                                                  submodule_search_locations=[str(glue)])
    assert spec is not None and spec.loader is not None
    module = sys.modules["loraprompt_a1111"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
