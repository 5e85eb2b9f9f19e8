"""Files written by lycoris-lora with one tensor's shape made wrong (robustness.md item 9): each is
refused naming the file and the module, the other modules never half-applied, the model unchanged.
Shapes that torch would broadcast silently are the ones to catch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loraprompt import Patcher, read_adapter
from loraprompt.errors import LoraPromptError
from tests.fixtures.loras import ToolLoraCache

MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _corrupt(tool_loras: ToolLoraCache, tmp_path: Path, algo: str, part: str, make: Callable[[torch.Tensor], torch.Tensor],
             **kwargs: object) -> Path:
    """The LyCORIS `algo` file with `MODULE.part` replaced by make(the tensor)."""
    tool = tool_loras.get("lycoris", "sd1", algo, **kwargs)
    tensors = load_file(str(tool.path))
    key = f"{MODULE}.{part}"
    tensors[key] = make(tensors[key]).contiguous()
    with safe_open(str(tool.path), "pt") as f:
        metadata = f.metadata()
    path = tmp_path / f"{algo}-{part}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def _refused(path: Path) -> str:
    """The refusal's message; the model bit-exactly as it was."""
    from tests.fixtures.models import tiny_sd1

    models = tiny_sd1()
    before = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in models.items()}
    with pytest.raises(LoraPromptError) as info:
        Patcher(models).sync([(read_adapter(path), 1.0, 1.0)])
    for component, model in models.items():
        assert all(torch.equal(v, before[component][k]) for k, v in model.state_dict().items())
    message = str(info.value)
    assert str(path) in message and MODULE.removeprefix("lora_unet_") in message
    return message


@pytest.mark.parametrize("part", ["hada_w2_a", "hada_w1_a"])
def test_loha_half_with_one_row_is_refused(tool_loras: ToolLoraCache, tmp_path: Path, part: str) -> None:
    path = _corrupt(tool_loras, tmp_path, "loha", part, lambda t: t[:1])
    assert "hada_w1" in _refused(path)


def test_dora_scale_of_one_value_is_refused(tool_loras: ToolLoraCache, tmp_path: Path) -> None:
    path = _corrupt(tool_loras, tmp_path, "locon", "dora_scale", lambda t: t.flatten()[:1].reshape(1, 1), dora_wd=True)
    assert "dora_scale" in _refused(path)


def test_ia3_vector_of_one_value_is_refused(tool_loras: ToolLoraCache, tmp_path: Path) -> None:
    path = _corrupt(tool_loras, tmp_path, "ia3", "weight", lambda t: t.flatten()[:1])
    assert "ia3" in _refused(path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool])
def test_integer_factors_are_refused_naming_the_key(tool_loras: ToolLoraCache, tmp_path: Path, dtype: torch.dtype) -> None:
    path = _corrupt(tool_loras, tmp_path, "locon", "lora_up.weight", lambda t: (t * 10).to(dtype))
    assert f"{MODULE}.lora_up.weight" in _refused(path)


def test_lokr_factors_whose_inner_ranks_differ_are_refused_when_read(tool_loras: ToolLoraCache, tmp_path: Path) -> None:
    """A LoKr half given as lokr_w2_a @ lokr_w2_b whose inner sizes differ was only caught at sync,
    as torch's raw "mat1 and mat2 shapes cannot be multiplied" (noticed by the formats review): it
    is refused when read, naming both factors and their shapes."""
    from loraprompt.errors import AdapterFileError

    path = _corrupt(tool_loras, tmp_path, "lokr", "lokr_w2_b", lambda t: torch.cat([t, t]), rank=1, factor=2,
                    decompose_both=True)
    with pytest.raises(AdapterFileError, match=r"lokr_w2_a \(4, 1\) and lokr_w2_b \(2, 4\)"):
        read_adapter(path)
    assert "inner sizes differ" in _refused(path)


@pytest.mark.parametrize(("part", "make", "shapes"), [
    ("a2.weight", lambda t: torch.cat([t, t]), r"a1 \(8, 4\) and a2 \(8, 8\) do not join \(their inner sizes differ\)"),
    ("a2.weight", lambda t: t[:, :1], r"a1 \(8, 4\) and a2 \(4, 1\) do not join \(a1 @ a2 is not square\)"),
    ("b2.weight", lambda t: torch.cat([t, t]), r"b1 \(8, 4\) and b2 \(8, 8\) do not join \(their inner sizes differ\)"),
])
def test_glora_factors_that_do_not_join_are_refused_when_read(tool_loras: ToolLoraCache, tmp_path: Path, part: str,
                                                             make: Callable[[torch.Tensor], torch.Tensor], shapes: str) -> None:
    """GLoRA factors whose inner sizes differ were only caught at sync, as torch's own shape error,
    and an a2 one column wide broadcast silently into the weight: refused when read, as LoKr's are,
    naming the file, the key and both factors' shapes."""
    from loraprompt.errors import AdapterFileError

    path = _corrupt(tool_loras, tmp_path, "glora", part, make)
    with pytest.raises(AdapterFileError, match=shapes) as info:
        read_adapter(path)
    assert str(path) in str(info.value) and f"{MODULE}.a1.weight" in str(info.value)
    assert "do not join" in _refused(path)
