"""Models offloaded by accelerate, as diffusers' `enable_sequential_cpu_offload()` leaves them:
every module holds a `meta` placeholder and its hook copies the real tensor in before each
forward. Before loraprompt.placement the patcher wrote the placeholders, reported every weight
written, and the LoRA silently did not apply. Real accelerate hooks, on the CPU as the execution
device (what diffusers does on a GPU, with the GPU as that device)."""

from __future__ import annotations

import pytest
import torch
from accelerate import cpu_offload, disk_offload

from loraprompt import Patcher
from loraprompt.errors import PatchError
from tests.fixtures.models import tiny_sd1
from tests.patcher.test_engine import make_adapter
from tests.patcher.test_unfused import ramp, unet_out

IDS = torch.tensor([[0, 320, 125, 539, 999]])  # the tiny text encoder has 1000 tokens


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return unet_out(model), model["text_encoder"](IDS).last_hidden_state


def assert_same(got, expected) -> None:
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def offloaded() -> dict[str, torch.nn.Module]:
    model = tiny_sd1()
    for component in model.values():
        cpu_offload(component, execution_device=torch.device("cpu"))
    assert model["unet"].conv_in.weight.is_meta  # what the patcher sees between forwards
    return model


def kept(model) -> dict[str, torch.Tensor]:
    """Copies of the tensors the offload hooks keep (the real weights)."""
    out = {}
    for component, root in model.items():
        for name, module in root.named_modules():
            hook = getattr(module, "_hf_hook", None)
            weights = getattr(hook, "weights_map", None)
            for param, value in module._parameters.items():
                if weights is not None and value is not None:
                    out[f"{component}:{name}.{param}"] = weights[param].clone()
    return out


def test_a_lora_applies_switches_and_restores_on_a_sequentially_offloaded_model() -> None:
    twin, model = tiny_sd1(), offloaded()
    a, b = make_adapter(twin, 1), make_adapter(twin, 2)
    base, before = outputs(twin), kept(model)
    assert_same(outputs(model), base)
    plain, patcher = Patcher(twin), Patcher(model)
    for entries in ([(a, 1.0, 0.8)], [(b, 0.5, 1.0)], [(a, 1.0, 0.3), (b, 0.7, 0.7)]):
        plain.sync(entries)
        report = patcher.sync(entries)
        assert report.patched == plain.sync(entries).patched > 0
        expected = outputs(twin)
        assert not torch.equal(expected[0], base[0]) and not torch.equal(expected[1], base[1])
        assert_same(outputs(model), expected)  # the LoRA really applies, in UNet and text encoder
    patcher.restore()
    after = kept(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # bit-exact
    assert_same(outputs(model), base)
    assert model["unet"].conv_in.weight.is_meta  # the placeholders were left alone


def test_a_scheduled_lora_runs_unfused_on_an_offloaded_model() -> None:
    twin, model = tiny_sd1(), offloaded()
    adapter = make_adapter(twin, 2, every=1)
    plain, patcher = Patcher(twin, schedules="unfused"), Patcher(model, schedules="unfused")
    for step in (1, 3):
        plain.sync([ramp(adapter)], step=step, total_steps=4)
        assert patcher.sync([ramp(adapter)], step=step, total_steps=4).unfused > 0
        assert_same(outputs(model), outputs(twin))
    patcher.restore()
    plain.restore()
    assert_same(outputs(model), outputs(twin))


def test_weights_offloaded_to_disk_are_refused_by_name_and_nothing_is_written(tmp_path) -> None:
    model = tiny_sd1()
    disk_offload(model["unet"], str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    adapter = make_adapter(model, 1)
    base = outputs(model)
    with pytest.raises(PatchError, match=r"unet\.\S+\.weight: the weight is offloaded to disk by accelerate"):
        Patcher(model).sync([(adapter, 1.0, 1.0)])
    assert_same(outputs(model), base)  # the text encoder was not patched either


def test_an_empty_meta_model_is_refused_by_name() -> None:
    adapter = make_adapter(tiny_sd1(), 1)
    model = {k: v.to("meta") for k, v in tiny_sd1().items()}  # as init_empty_weights leaves a model
    with pytest.raises(PatchError, match=r"\.weight: the weight is on the 'meta' device, not loaded"):
        Patcher(model).sync([(adapter, 1.0, 1.0)])
