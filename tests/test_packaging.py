"""The install extras carry what their features import: a user who installs `ui` (what ./run.sh
does) or `serve` must not meet a ModuleNotFoundError the test environment (which has everything)
would hide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def closure(extra: str) -> set[str]:
    """Distribution names an extra installs (its own and those of the loraprompt[...] extras it names)."""
    names: set[str] = set()
    for requirement in EXTRAS[extra]:
        nested = re.fullmatch(r"loraprompt\[([\w-]+)\]", requirement)
        if nested:
            names |= closure(nested.group(1))
        else:
            names.add(re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0].lower())
    return names


@pytest.mark.parametrize(("extra", "needs", "why"), [
    ("ui", "peft", "the web UI's Train tab runs loraprompt.train, which builds its LoRA layers with peft"),
    ("train", "peft", "loraprompt.train builds its LoRA layers with peft"),
    ("ui", "scipy", "diffusers' LMS sampler, which the web UI lists, integrates with scipy"),
    ("serve", "scipy", "diffusers' LMS sampler, which /sdapi/v1/samplers lists, integrates with scipy"),
    ("serve-ray", "ray", "loraprompt serve --ray"),
])
def test_an_extra_installs_what_its_features_import(extra: str, needs: str, why: str) -> None:
    assert needs in closure(extra), why


def test_the_training_code_imports_peft_so_the_extras_above_are_needed() -> None:
    # if training stops using peft, the rows above can go
    assert re.search(r"^\s*(from peft|import peft)", (ROOT / "loraprompt" / "train" / "model.py").read_text(), re.M)
