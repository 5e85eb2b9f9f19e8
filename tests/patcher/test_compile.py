"""Step-scheduled LoRAs on a model compiled with torch.compile.

A scheduled LoRA runs unfused: its low-rank path is added in the hooked modules' forward with the
step's strength. Those strengths were Python floats, which dynamo takes for constants of the graph:
every step with a new strength failed the guards and compiled the model again (8 compilations for
8 steps of the tiny UNet, ~20 s each here with no code generation at all), and once
`torch._dynamo.config.recompile_limit` (8) was reached the model ran uncompiled for the rest of the
process. A compiled forward now reads them from a tensor updated in place. The counting backend
runs the graphs through AOTAutograd (`aot_eager`): dynamo's guards and the traced code are the
ones inductor gets, without its code generation (minutes on this CPU)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from loraprompt import Patcher
from tests.fixtures.models import SD1_TEXT_WIDTH, tiny_sd1
from tests.patcher.helpers import assert_bit_equal, snapshot, tool_adapters
from tests.patcher.test_unfused import ramp

dynamo = pytest.importorskip("torch._dynamo")
testing = pytest.importorskip("torch._dynamo.testing")


def block_inputs(unet: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states, time embedding, text context) for the UNet's first down block."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, unet.config.block_out_channels[0], 8, 8, generator=gen)
    temb = torch.randn(2, unet.time_embedding.linear_2.out_features, generator=gen)
    context = torch.randn(2, 5, SD1_TEXT_WIDTH, generator=gen)
    return hidden, temb, context


def run(block: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    hidden, temb, context = inputs
    with torch.no_grad():
        return block(hidden, temb, encoder_hidden_states=context)[0]


def test_a_scheduled_lora_compiles_once_and_follows_every_step() -> None:
    dynamo.reset()
    model = tiny_sd1()
    base = snapshot(model)
    block = model["unet"].down_blocks[0]  # resnets (3x3 convs), attentions (1x1 proj convs, Linears)
    inputs = block_inputs(model["unet"])
    counter = testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, backend=counter)
    patcher = Patcher(model, schedules="unfused")
    entries = [ramp(tool_adapters()[0])]  # kohya: UNet strength step/total, 0 at step 0
    without = run(block, inputs)
    outputs = []
    for step in range(6):
        report = patcher.sync(entries, step=step, total_steps=6)
        assert report.unfused > 0
        got, eager = run(compiled, inputs), run(block, inputs)  # the eager forward: Python-float strengths
        assert torch.allclose(got, eager, rtol=1e-5, atol=1e-6), (step, float((got - eager).abs().max()))
        outputs.append(got)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times in 6 steps"
    assert torch.allclose(outputs[0], without, rtol=1e-6, atol=1e-7)  # step 0: the ramp is at zero
    changes = [float((b - a).abs().max()) for a, b in pairwise(outputs)]
    assert all(c > 1e-4 for c in changes), changes  # each step's strength reached the compiled graph
    patcher.restore()
    assert_bit_equal(model, base)
    assert torch.allclose(run(compiled, inputs), without, rtol=1e-6, atol=1e-7)  # the hooks are gone
    assert counter.frame_count == 2  # once more: the modules' forward changed back


def test_a_compiled_block_follows_a_cast_model_and_new_hooks() -> None:
    """Compiled calls only, against an eager twin (an eager call would cast the factors again for
    its own input). After the model is cast to bfloat16, and again after a second scheduled LoRA
    joins, the block compiles once more and then follows every step."""
    dynamo.reset()
    model, twin = tiny_sd1(), tiny_sd1()
    block = model["unet"].down_blocks[0]
    counter = testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, backend=counter)
    patcher, reference = Patcher(model, schedules="unfused"), Patcher(twin, schedules="unfused")
    adapters = tool_adapters()
    entries = [ramp(adapters[0])]
    dtype = torch.float32
    for phase in range(3):
        if phase == 1:
            dtype = torch.bfloat16
            for component in (*model.values(), *twin.values()):
                component.to(dtype)
        elif phase == 2:
            entries = [*entries, ramp(adapters[1])]  # PEFT on the same modules: two LoRAs per hook
        inputs = tuple(t.to(dtype) for t in block_inputs(model["unet"]))
        for step in (2, 3, 4):
            patcher.sync(entries, step=step, total_steps=6)
            reference.sync(entries, step=step, total_steps=6)
            got, expected = run(compiled, inputs).float(), run(twin["unet"].down_blocks[0], inputs).float()
            tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: rounded in another order
            assert float((got - expected).abs().max()) <= tolerance * float(expected.abs().max()), (phase, step)
        assert counter.frame_count == phase + 1, (phase, counter.frame_count)
    patcher.restore()


def test_generations_with_the_same_layout_reuse_the_compiled_graphs() -> None:
    """Each generation makes new hooks (and new cast factors); a later generation whose hooks have
    a layout seen before (the same modules, LoRA count and ranks: kohya and PEFT files of one
    model) runs the graph compiled for it, with its own factors: A, none, A, B, none, A compile
    twice in all (with hooks and without), and every step matches an eager twin."""
    dynamo.reset()
    model, twin = tiny_sd1(), tiny_sd1()
    block = model["unet"].down_blocks[0]
    inputs = block_inputs(model["unet"])
    counter = testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(block, backend=counter)
    patcher, reference = Patcher(model, schedules="unfused"), Patcher(twin, schedules="unfused")
    kohya, peft = tool_adapters()[:2]
    for adapter in (kohya, None, kohya, peft, None, kohya):
        for step in (1, 2):
            entries = [] if adapter is None else [ramp(adapter)]
            patcher.sync(entries, step=step, total_steps=3)
            reference.sync(entries, step=step, total_steps=3)
            got, expected = run(compiled, inputs), run(twin["unet"].down_blocks[0], inputs)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (adapter and adapter.name, step)
        patcher.restore()
        reference.restore()
    assert counter.frame_count == 2, counter.frame_count
