"""The package facade: every public name resolves, and importing the package stays torch-free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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


def test_type_checkers_see_the_public_api_of_the_installed_wheel(tmp_path: Path) -> None:
    """A tool that type-checks its code against an installed loraprompt gets real types: the wheel
    ships `py.typed` (without it mypy treats the whole package as Any, silently under
    ignore_missing_imports) and the lazy exports are declared for checkers. The wheel is installed
    into a bare venv (no torch or lark there: those are Any, as for a user without stubs)."""
    root, src = Path(__file__).resolve().parents[1], tmp_path / "src"  # a copy: no build/ left in the tree
    shutil.copytree(root / "loraprompt", src / "loraprompt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("loraprompt-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python3*/site-packages")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    (tmp_path / "user.py").write_text(
        "import loraprompt\n"
        "reveal_type(loraprompt.Patcher)\n"
        "reveal_type(loraprompt.parse('a <lora:x:0.5>').loras)\n"
        "wrong: int = loraprompt.format_activation(loraprompt.LoraActivation('x', 1.0, 1.0))\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--python-executable", str(venv / "bin" / "python"), "--ignore-missing-imports",
         "--no-incremental", "--config-file", os.devnull, "user.py"],
        cwd=tmp_path, capture_output=True, text=True, check=False,  # mypy exits 1: the line typed wrong on purpose
    )
    out = result.stdout
    assert "loraprompt.patcher.Patcher" in out, out
    assert "loraprompt.syntax.model.LoraActivation" in out, out
    assert 'Incompatible types in assignment (expression has type "str", variable has type "int")' in out, out
