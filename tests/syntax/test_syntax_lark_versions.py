"""The tables run again under lark 1.1.2 (A1111's pin) in the interpreter named by LORAPROMPT_LARK112_PYTHON
(test.sh points it at the A1111 stand-in venv; no conftest is loaded there, so torch is never needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLES = ["test_syntax_a1111_tags.py", "test_syntax_a1111_prompt.py", "test_syntax_loraprompt_profile.py",
          "test_syntax_doctests.py"]


def test_tables_pass_under_lark_1_1_2() -> None:
    python = os.environ.get("LORAPROMPT_LARK112_PYTHON")
    if not python:
        pytest.skip("LORAPROMPT_LARK112_PYTHON is not set (a Python with lark==1.1.2, pytest and hypothesis)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    version = subprocess.run([python, "-c", "import lark; print(lark.__version__)"], capture_output=True,
                             text=True, env=env, check=True).stdout.strip()
    assert version == "1.1.2", f"{python} has lark {version}, not 1.1.2"
    run = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-k", "not heavy_libraries",
                          *[str(ROOT / "tests" / "syntax" / t) for t in TABLES]],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
