"""The low-rank write path (one addmm per weight, no full-size delta) equals the adapter's own
delta for files read by the real reader: Linear, 1x1 and 3x3 convs, text encoder, dyn, dtypes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from loraprompt import Patcher, read_adapter
from loraprompt.errors import PatchError
from tests.fixtures.models import tiny_sd1
from tests.integrations.tiny_pipeline import write_kohya_lora
from tests.patcher.helpers import assert_bit_equal, reference, snapshot, to_dtype

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def write_locon(path, unet) -> None:
    """kohya LoCon keys on the 3x3 convs of the first resnet block."""
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for name in ("down_blocks.0.resnets.0.conv1", "down_blocks.0.resnets.0.conv2"):
        weight = dict(unet.named_modules())[name].weight
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, weight.shape[1], 3, 3, generator=gen) * 0.2
        tensors[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], 4, 1, 1, generator=gen) * 0.2
        tensors[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lowrank_path_equals_the_adapters_delta(tmp_path, dtype) -> None:
    model = to_dtype(tiny_sd1(), dtype)
    write_kohya_lora(tmp_path / "a.safetensors", model, seed=1, rank=4)
    write_locon(tmp_path / "c.safetensors", model["unet"])
    a, c = read_adapter(tmp_path / "a.safetensors"), read_adapter(tmp_path / "c.safetensors")
    original = snapshot(model)
    patcher = Patcher(model, delta_cache_mb=0)
    plan = [(a, 0.6, 1.2), (c, 1.0, -0.7)]
    patcher.sync(plan)
    assert len(patcher.applied) == len(a.modules) + len(c.modules)
    now = snapshot(model)
    for key, value in reference(model, original, plan).items():
        torch.testing.assert_close(now[key].float(), value.float(), rtol=TOL[dtype], atol=TOL[dtype])
    assert patcher.backup_nbytes == sum(original[k].nbytes for k in reference(model, original, plan))
    patcher.restore()
    assert_bit_equal(model, original)


def test_dyn_cuts_the_rank_like_the_adapter_does(tmp_path) -> None:
    model = tiny_sd1()
    write_kohya_lora(tmp_path / "a.safetensors", model, seed=2, rank=4)
    adapter = read_adapter(tmp_path / "a.safetensors")
    for module in adapter.modules.values():
        module.dyn = 2  # type: ignore[attr-defined]
    original = snapshot(model)
    Patcher(model).sync([(adapter, 1.0, 1.0)])
    now = snapshot(model)
    for key, value in reference(model, original, [(adapter, 1.0, 1.0)]).items():
        torch.testing.assert_close(now[key], value, rtol=1e-5, atol=1e-5)


def test_a_misfit_lowrank_module_is_refused_before_writing(tmp_path) -> None:
    model = tiny_sd1()
    write_kohya_lora(tmp_path / "a.safetensors", model, seed=3)
    adapter = read_adapter(tmp_path / "a.safetensors")
    module = adapter.modules["unet/down_blocks_0_attentions_0_proj_in"]
    module.tensors = {**module.tensors, "down": torch.randn(2, 5, 1, 1)}
    original = snapshot(model)
    with pytest.raises(PatchError, match=r"proj_in.*does not fit"):
        Patcher(model).sync([(adapter, 1.0, 1.0)])
    assert_bit_equal(model, original)


def test_the_lowrank_path_never_builds_a_full_delta(tmp_path) -> None:
    model = tiny_sd1()
    write_kohya_lora(tmp_path / "a.safetensors", model, seed=4)
    adapter = read_adapter(tmp_path / "a.safetensors")

    def refuse(weight):  # type: ignore[no-untyped-def]
        raise AssertionError("full delta built")

    for module in adapter.modules.values():
        module.unit_delta = refuse  # type: ignore[method-assign]
    patcher = Patcher(model)
    for strength in (1.0, 0.3):
        assert patcher.sync([(adapter, strength, strength)]).written == len(adapter.modules)
