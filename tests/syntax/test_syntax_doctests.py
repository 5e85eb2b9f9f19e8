"""The examples in the syntax modules' docstrings are executable specifications."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["values", "model", "scanner", "parser", "printer", "context", "schedule", "emphasis"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(f"loraprompt.syntax.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0


def test_syntax_imports_no_heavy_libraries() -> None:
    import subprocess
    import sys

    code = ("import sys, loraprompt; loraprompt.parse('<lora:x:1>'); import loraprompt.syntax.cli; "
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
