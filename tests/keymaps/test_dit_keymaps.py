"""Diffusion-transformer key maps (SD3, Flux.1, Wan 2.x): golden files and the fused-row invariants."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from loraprompt.keymaps import KeyMap, keymap_for_module
from loraprompt.keymaps import dit as keymaps_dit
from tests.fixtures import dit

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "keymaps"
REGEN = os.environ.get("LORAPROMPT_REGEN_GOLDEN") == "1"


def _golden_text(keymap: KeyMap) -> str:
    lines = [f"{keymap.component}\t{alias}\t{t.module}.{t.param}" for alias, t in sorted(keymap.targets.items())]
    for alias, pieces in sorted(keymap.fused.items()):
        for target, (start, stop) in pieces:
            rows = "" if target.rows is None else f"[{target.rows[0]}:{target.rows[1]}]"
            lines.append(f"{keymap.component}\t{alias}[{start}:{stop}]\t{target.module}.{target.param}{rows}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("family", list(dit.CONFIGS))
def test_golden_dit_keymaps(family: str) -> None:
    keymap = keymap_for_module("transformer", dit.tiny_transformer(family))
    assert keymap.family == family and keymap.ambiguous == ()
    path = GOLDEN / f"{family}-diffusers.txt"
    text = _golden_text(keymap)
    if REGEN:
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} changed; rerun with LORAPROMPT_REGEN_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("family", list(dit.CONFIGS))
def test_fused_pieces_tile_their_rows_and_fit_their_targets(family: str) -> None:
    keymap = keymap_for_module("transformer", dit.tiny_transformer(family))
    for alias, pieces in keymap.fused.items():
        starts = [rows for _, rows in pieces]
        assert starts[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(starts)), alias
        for target, (start, stop) in pieces:
            shape = keymap.shape(target)
            assert shape is not None and shape[0] == stop - start, alias
    # every Linear/Conv of the model is reachable under its native name too
    model = dit.tiny_transformer(family)
    names = {n for n, _ in model.named_modules()}
    shapes = {f"{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    native = {p.module for pieces in keymaps_dit.native_aliases(family, names, shapes).values() for p in pieces}
    assert set(dit.linear_names(model)) <= native
