"""Static checks of the extension's files: Python 3.10 grammar, install.py against pyproject, and
the entry script's unique module name."""

from __future__ import annotations

import ast
import importlib
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from .conftest import ROOT, Webui

PY_FILES = sorted([ROOT / "install.py", *ROOT.glob("scripts/*.py"), *ROOT.glob("extension/*.py")])


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_under_python_310_grammar(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    compile(source, str(path), "exec", flags=0, dont_inherit=True, _feature_version=10)
    ast.parse(source, str(path), feature_version=(3, 10))


def test_ruff_py310_finds_no_syntax_errors() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "--no-cache", "--select", "E9", "--target-version", "py310", *map(str, PY_FILES)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_requirements_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {*project["dependencies"], *project["optional-dependencies"]["engine"]}
    tree = ast.parse((ROOT / "install.py").read_text(encoding="utf-8"))
    table = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "REQUIREMENTS")
    listed = {spec for _, spec in ast.literal_eval(table)}
    assert listed == declared
    assert not any("diffusers" in spec for spec in listed)


def test_install_installs_only_what_is_missing(webui: Webui) -> None:
    launch = importlib.import_module("launch")
    launch.installed = {"lark", "torch", "numpy"}
    runpy.run_path(str(ROOT / "install.py"))
    assert launch.pip_calls == ['install "safetensors>=0.4.2"']
    launch.pip_calls.clear()
    launch.installed = {"lark", "torch", "numpy", "safetensors"}
    runpy.run_path(str(ROOT / "install.py"))
    assert launch.pip_calls == []


def test_glue_lives_under_a_unique_module_name(webui: Webui) -> None:
    webui.load_extension()
    assert "loraprompt_a1111.network" in sys.modules
    assert "extension" not in sys.modules or not str(getattr(sys.modules["extension"], "__file__", "")).startswith(str(ROOT / "extension"))


def test_a_lycoris_folder_linked_to_the_lora_folder_is_scanned_once(webui: Webui) -> None:
    """models/LyCORIS -> models/Lora (a common set-up): one folder, so one root, not every file twice."""
    webui.load_extension()
    (webui.lora_dir.parent / "LyCORIS").symlink_to(webui.lora_dir)
    assert sys.modules["loraprompt_a1111.webui"].lora_dirs() == [str(webui.lora_dir)]
