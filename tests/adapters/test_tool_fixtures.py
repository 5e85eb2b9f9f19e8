"""Files written by the real tools (diffusers + PEFT, kohya conversion, lycoris-lora) on tiny SD1-,
SD2- and SDXL-shaped models: loraprompt's merge must match the tool's own merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from loraprompt.adapters import read_adapter
from loraprompt.keymaps import check_family, keymap_for_module, map_adapter
from tests.adapters.merging import merge
from tests.fixtures.loras import ToolLora, write_diffusers_lora, write_kohya_lora, write_lycoris

TOL = {torch.float32: 2e-5, torch.float16: 2e-4, torch.bfloat16: 2e-3}


def _check(tool: ToolLora, strength: float, tol: float, *, fmt: str | None = None, algorithms: set[str] | None = None) -> None:
    models = tool.base()
    untouched = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in models.items()}
    adapter = read_adapter(tool.path)
    assert adapter.family == tool.family
    if fmt is not None:
        assert adapter.format == fmt
    if algorithms is not None:
        assert adapter.algorithms() == algorithms
    assert adapter.unclaimed == ()
    keymaps = {c: keymap_for_module(c, m) for c, m in models.items()}
    assert check_family(adapter, keymaps) == []
    targets = [t for _, t in map_adapter(adapter, keymaps).mapped.values()]
    assert len(set(targets)) == len(targets) == len(adapter.modules), "two adapter modules share one target"
    got = merge(models, adapter, strength)
    moved = 0
    for component, ref in tool.merged.items():
        for key, expected in ref.items():
            torch.testing.assert_close(got[component][key], expected, rtol=tol, atol=tol, msg=lambda m, k=f"{component}.{key}": f"{k}: {m}")
            moved += int(not torch.equal(expected, untouched[component][key]))
    assert moved >= len(adapter.modules) // 2


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_save_lora_weights(tmp_path: Path, family: str) -> None:
    tool = write_diffusers_lora(family, tmp_path / "d.safetensors", strength=0.7)
    _check(tool, 0.7, TOL[torch.float32], fmt="diffusers", algorithms={"lora"})


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_kohya_converted_by_diffusers(tmp_path: Path, family: str) -> None:
    tool = write_kohya_lora(family, tmp_path / "k.safetensors", alpha=2.0)
    _check(tool, 1.0, TOL[torch.float32], fmt="kohya", algorithms={"lora"})


@pytest.mark.parametrize(("family", "strength"), [("sd1", 1.0), ("sdxl", 0.5)])
def test_peft_dora(tmp_path: Path, family: str, strength: float) -> None:
    tool = write_diffusers_lora(family, tmp_path / "dora.safetensors", use_dora=True, strength=strength)
    _check(tool, strength, TOL[torch.float32])


def test_kohya_dora_with_the_converters_mangled_magnitude_keys(tmp_path: Path) -> None:
    tool = write_kohya_lora("sd1", tmp_path / "kd.safetensors", use_dora=True, strength=0.5)
    _check(tool, 0.5, TOL[torch.float32], fmt="kohya")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files(tmp_path: Path, dtype: torch.dtype) -> None:
    tool = write_diffusers_lora("sd1", tmp_path / "h.safetensors", dtype=dtype)
    _check(tool, 1.0, TOL[dtype])


LYCORIS_SD1: list[tuple[str, dict[str, Any], set[str]]] = [
    ("locon", {}, {"lora"}),
    ("locon", {"use_tucker": True}, {"lora"}),
    ("locon", {"dora_wd": True}, {"lora"}),
    ("locon", {"dora_wd": True, "wd_on_output": False}, {"lora"}),
    ("loha", {}, {"loha"}),
    ("loha", {"use_tucker": True}, {"loha"}),
    ("loha", {"dora_wd": True}, {"loha"}),
    ("lokr", {}, {"lokr"}),
    ("lokr", {"decompose_both": True}, {"lokr"}),
    ("lokr", {"full_matrix": True}, {"lokr"}),
    ("lokr", {"use_tucker": True}, {"lokr"}),
    ("ia3", {}, {"ia3"}),
    ("full", {}, {"full"}),
    ("full", {"train_norm": True}, {"full", "norm"}),
    ("glora", {}, {"glora"}),
    ("diag-oft", {}, {"oft"}),
    ("diag-oft", {"constraint": 1e-3, "rescaled": True}, {"oft"}),
    ("boft", {}, {"boft"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "kwargs", "algorithms"), LYCORIS_SD1, ids=[f"{a}-{'-'.join(k) or 'plain'}" for a, k, _ in LYCORIS_SD1])
def test_lycoris_sd1(tmp_path: Path, algo: str, kwargs: dict[str, Any], algorithms: set[str]) -> None:
    tool = write_lycoris("sd1", tmp_path / f"{algo}.safetensors", algo, strength=0.6, **kwargs)
    _check(tool, 0.6, TOL[torch.float32], fmt="lycoris", algorithms=algorithms)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
@pytest.mark.parametrize(("algo", "dtype"), [("loha", torch.float16), ("lokr", torch.bfloat16), ("locon", torch.float32), ("diag-oft", torch.float32)])
def test_lycoris_sd2_sdxl(tmp_path: Path, family: str, algo: str, dtype: torch.dtype) -> None:
    tool = write_lycoris(family, tmp_path / f"{algo}.safetensors", algo, strength=0.8, dtype=dtype)
    _check(tool, 0.8, TOL[dtype], fmt="lycoris")
