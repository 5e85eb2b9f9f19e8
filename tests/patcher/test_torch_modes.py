"""The patcher in the torch modes its hosts run in.

Autocast: a sync inside an autocast region writes the same bits as outside it. Automatic1111 activates
networks (extra_networks.activate) and calls on_cfg_denoiser inside `devices.autocast()`; there,
the out-of-place matmuls that build LoHa, LoKr and DoRA deltas ran in the autocast dtype, so 293,
11 and 267 of the tiny model's weights came out different (rounded through bfloat16/fp16), and
different from `loraprompt merge`. CPU autocast in bfloat16 stands in for CUDA's fp16 one.

Inference mode: a model whose weights are inference tensors (loaded under torch.inference_mode, as
ComfyUI loads models) could not be patched at all: 'Inference tensors do not track version
counter' inside inference mode, 'Inplace update to inference tensor outside InferenceMode' outside."""

from __future__ import annotations

import pytest
import torch

from loraprompt import Patcher
from tests.fixtures.models import tiny_sd1
from tests.patcher.helpers import assert_bit_equal, snapshot, tool_adapters
from tests.patcher.test_unfused import constant, unet_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_format_syncs_to_the_same_bits_under_autocast(dtype) -> None:
    model = {k: v.to(dtype) for k, v in tiny_sd1().items()}
    base = snapshot(model)
    entries = [(adapter, 0.9, 0.7) for adapter in tool_adapters()]  # kohya, PEFT, DoRA, LoHa, LoKr, LoCon
    outside = Patcher(model)
    outside.sync(entries)
    expected = snapshot(model)
    outside.restore(release=True)
    inside = Patcher(model)  # its own caches: every delta is computed again, under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside.sync(entries)
        assert torch.is_autocast_enabled("cpu")  # left as the caller set it
    assert_bit_equal(model, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside.restore()
    assert_bit_equal(model, base)


def loaded_under_inference_mode() -> dict[str, torch.nn.Module]:
    with torch.inference_mode():
        model = tiny_sd1()  # built (deep-copied) in inference mode: its parameters are inference tensors
    weight = next(model["unet"].parameters())
    assert weight.is_inference()
    with pytest.raises(RuntimeError, match="do not track version counter"):
        _ = weight._version
    return model


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_model_of_inference_tensors_is_patched_and_restored(where) -> None:
    model, twin = loaded_under_inference_mode(), tiny_sd1()
    a, b = tool_adapters()[0], tool_adapters()[3]  # kohya, LoHa
    base = snapshot(model)
    reference = Patcher(twin)
    patcher = Patcher(model)
    with torch.inference_mode(where == "inside"):
        for entries in ([(a, 1.0, 0.8)], [(b, 0.5, 1.0), (a, 0.3, 0.3)]):
            patcher.sync(entries)
            reference.sync(entries)
            assert_bit_equal(model, snapshot(twin))
        patcher.restore()
    assert_bit_equal(model, base)
    assert next(model["unet"].parameters()).is_inference()  # still the loaded tensors


def test_a_scheduled_lora_runs_unfused_on_a_model_of_inference_tensors() -> None:
    model, twin = loaded_under_inference_mode(), tiny_sd1()
    adapter = tool_adapters()[0]
    expected_patcher = Patcher(twin, schedules="unfused")
    expected_patcher.sync([constant(adapter, 0.6)], step=1, total_steps=4)
    expected = unet_out(twin)
    patcher = Patcher(model, schedules="unfused")
    with torch.inference_mode():
        assert patcher.sync([constant(adapter, 0.6)], step=1, total_steps=4).unfused > 0
        got = unet_out(model)
        patcher.restore()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("schedules", ["fused", "unfused"])
def test_a_channels_last_unet_takes_every_format(schedules) -> None:
    """`pipe.unet.to(memory_format=torch.channels_last)` (diffusers' own speed advice) makes conv
    weights non-contiguous. A step-scheduled plain LoRA on one failed an assertion after the fused
    weights were written; now its factors are checked against the weight's shape, not a matrix
    view of it, and every format gives the contiguous twin's output, restored bit-exactly."""
    for adapter in tool_adapters():
        model, twin = tiny_sd1(), tiny_sd1()
        model["unet"].to(memory_format=torch.channels_last)
        assert not model["unet"].conv_in.weight.is_contiguous()
        base = snapshot(model)
        entries = [constant(adapter, 0.7)] if schedules == "unfused" else [(adapter, 1.0, 0.7)]
        patcher, reference = Patcher(model, schedules=schedules), Patcher(twin, schedules=schedules)
        patcher.sync(entries, step=1, total_steps=4)
        reference.sync(entries, step=1, total_steps=4)
        got, expected = unet_out(model), unet_out(twin)
        assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5, adapter.path
        patcher.restore()
        assert_bit_equal(model, base)


@pytest.mark.parametrize("schedules", ["fused", "unfused"])
def test_fused_qkv_projections_are_refused_by_name_until_unfused(schedules) -> None:
    """diffusers' `fuse_qkv_projections()` keeps each Attention's to_q/to_k/to_v beside the
    to_qkv/to_kv it runs instead: the q/k/v parts of a LoRA were written where nothing reads them,
    silently (the output was 7% off the LoRA's). Now refused before anything is written, naming
    the module and the remedy; once unfused, the same LoRA applies (the refusal is not remembered).
    The error is a ModelStateError (a PatchError about the model's state, not the file) blaming
    the LoRA's module, also once the sync has prefixed the LoRA's label and file to it."""
    from loraprompt.errors import ModelStateError

    model, twin = tiny_sd1(), tiny_sd1()
    model["unet"].fuse_qkv_projections()
    adapter = tool_adapters()[0]
    entries = [constant(adapter, 0.7)] if schedules == "unfused" else [(adapter, 1.0, 0.7)]
    base = snapshot(model)
    patcher = Patcher(model, schedules=schedules)
    said = patcher.check(entries)  # the dry run says it too
    assert [d.code for d in said] == ["lora-refused"] and "fuse_qkv_projections()" in said[0].message
    with pytest.raises(ModelStateError, match=rf"^{adapter.name} \(.*\): unet\.down_blocks.*attn1\.to_[qkv]: diffusers' "
                       r"fuse_qkv_projections\(\) runs .*attn1\.to_qkv instead.*call unfuse_qkv_projections\(\)") as caught:
        patcher.sync(entries, step=1, total_steps=4)
    assert any(caught.value.module is m for m in adapter.modules.values())  # the blamed module, kept too
    assert_bit_equal(model, base)
    report = patcher.sync(entries, step=1, total_steps=4, on_error="skip")
    assert report.skipped == [adapter.name] and [d.code for d in report.diagnostics] == ["lora-refused"]
    assert_bit_equal(model, base)
    model["unet"].unfuse_qkv_projections()
    assert patcher.check(entries) == []
    assert not patcher.sync(entries, step=1, total_steps=4, on_error="skip").skipped
    Patcher(twin, schedules=schedules).sync(entries, step=1, total_steps=4)
    got, expected = unet_out(model), unet_out(twin)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-5
    patcher.restore()
    assert_bit_equal(model, base)


def test_a_quantized_integer_weight_is_refused_naming_its_type() -> None:
    """A weight quantized to integers by a format the patcher does not know (int8 here; GGUF and
    torchao hold bytes too) is refused before anything is written, saying what it is."""
    from loraprompt.errors import PatchError

    model = tiny_sd1()
    layer = model["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k
    layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.int8), requires_grad=False)
    base = snapshot(model)
    with pytest.raises(PatchError, match=r"attn1\.to_k' has no floating-point 'weight' to patch \(a Parameter of "
                                         r"torch\.int8: a quantized format this patcher cannot write\)"):
        Patcher(model).sync([(tool_adapters()[0], 1.0, 1.0)])
    assert_bit_equal(model, base)
