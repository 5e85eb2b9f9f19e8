"""merge into a diffusers SD3/Flux/Wan folder: the transformer equals the patched model, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraprompt import Patcher, read_adapter
from loraprompt.errors import ToolError
from loraprompt.tools import merge_checkpoint
from tests.fixtures import dit


def _folder(root: Path, family: str, dtype: torch.dtype) -> Path:
    dit.tiny_transformer(family, dtype=dtype).save_pretrained(root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": dit.PIPELINES[family]}))
    return root


@pytest.mark.parametrize(("family", "layout", "dtype"), [("flux", "kohya", torch.bfloat16), ("sd3", "kohya", torch.float32),
                                                         ("wan", "peft", torch.bfloat16), ("flux2", "bfl", torch.bfloat16)])
def test_merge_into_a_dit_folder_equals_the_patcher(tmp_path: Path, family: str, layout: str, dtype: torch.dtype) -> None:
    from diffusers.models.model_loading_utils import load_state_dict

    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    path = lora.path if layout == "peft" else dit.native_file(lora, tmp_path / "k.safetensors", layout)
    report = merge_checkpoint(_folder(tmp_path / "model", family, dtype), [(path, 1.0, 0.6)], tmp_path / "out")
    merged = load_state_dict(str(next((report.output / "transformer").glob("*.safetensors"))))
    model = dit.tiny_transformer(family, dtype=dtype)
    Patcher({"transformer": model}).sync([(read_adapter(path), 1.0, 0.6)])
    expected = model.state_dict()
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
    base = dit.tiny_transformer(family, dtype=dtype).state_dict()
    assert sum(not torch.equal(merged[k], base[k]) for k in base) >= len(lora.factors) - 1


def test_a_flux_lora_is_refused_by_an_sd3_folder(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "flux.safetensors")
    with pytest.raises(ToolError, match=r"is a Flux\.1 adapter; the loaded model is SD3"):
        merge_checkpoint(_folder(tmp_path / "model", "sd3", torch.float32), [lora.path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_convert_a_dit_lora_peft_kohya_peft_keeps_every_tensor(tmp_path: Path, family: str) -> None:
    from safetensors.torch import load_file

    from loraprompt.tools import convert_lora

    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    kohya = convert_lora(lora.path, tmp_path / "kohya.safetensors", "kohya").output
    keys = load_file(str(kohya))
    assert all(k.startswith("lora_transformer_") for k in keys)
    back = convert_lora(kohya, tmp_path / "back.safetensors", "peft").output
    original, again = load_file(str(lora.path)), load_file(str(back))
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    ref = dit.peft_fused(lora, 0.7)
    for path in (kohya, back):
        model = dit.tiny_transformer(family)
        Patcher({"transformer": model}).sync([(read_adapter(path), 0.7, 0.7)])
        assert all(torch.allclose(v, ref[k], rtol=0, atol=1e-6) for k, v in model.state_dict().items())
