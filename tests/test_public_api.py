"""The package facade: every public name resolves, and importing the package stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import loraprompt


def test_all_lists_exactly_the_lazy_exports() -> None:
    assert set(loraprompt.__all__) == {"__version__", *loraprompt._EXPORTS}


def test_every_public_name_resolves() -> None:
    for name in loraprompt.__all__:
        assert getattr(loraprompt, name) is not None, name


def test_parsing_through_the_facade_imports_no_torch() -> None:
    code = (
        "import sys, loraprompt; p = loraprompt.parse('a <lora:x:0.5> b');"
        "assert [a.name for a in p.loras] == ['x'], p.loras;"
        "assert 'torch' not in sys.modules and 'gradio' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_parse_prints_json() -> None:
    out = subprocess.run([sys.executable, "-m", "loraprompt", "parse", "a <lora:x:0.5:0.25> b"],
                         capture_output=True, text=True, check=True).stdout
    assert '"x"' in out and "0.25" in out
