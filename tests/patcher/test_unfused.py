"""Step-scheduled LoRAs run unfused (schedules="unfused"): their low-rank path in the modules'
forward with each step's strength, constant LoRAs fused. Tolerances are those stated in
loraprompt/unfused.py."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from loraprompt import Patcher
from loraprompt.plan import PlanEntry
from tests.fixtures.models import SD1_TEXT_WIDTH, tiny_sd1
from tests.patcher.helpers import assert_bit_equal, snapshot
from tests.patcher.test_engine import make_adapter

# max |unfused - fused| relative to max |output| at the same constant strength
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 3e-2}  # fp64 weights are summed in float32


@pytest.fixture
def model() -> dict[str, torch.nn.Module]:
    return tiny_sd1()


def unet_out(model, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    context = torch.randn(2, 5, SD1_TEXT_WIDTH, generator=gen).to(dtype)
    with torch.no_grad():
        return model["unet"](sample, 10, encoder_hidden_states=context).sample


def ramp(adapter, te: float = 1.0) -> PlanEntry:
    """UNet strength step/total: 0 at step 0, rising each step."""
    return PlanEntry(adapter, te=te, unet=0.0, unet_at=lambda s, n: s / n, name=adapter.name)


def constant(adapter, value: float) -> PlanEntry:
    return PlanEntry(adapter, te=1.0, unet=value, unet_at=lambda s, n: value, name=adapter.name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unfused_matches_fused_at_a_constant_strength_within_the_stated_tolerance(model, dtype) -> None:
    model = {k: v.to(dtype) for k, v in model.items()}
    base = snapshot(model)
    static, scheduled = make_adapter(model, 1), make_adapter(model, 2, every=1)
    fused = Patcher(model)
    fused.sync([(static, 1.0, 0.7), (scheduled, 1.0, 0.6)])
    expected = unet_out(model, dtype)
    fused.restore()
    patcher = Patcher(model, schedules="unfused")
    report = patcher.sync([(static, 1.0, 0.7), constant(scheduled, 0.6)], step=3, total_steps=10)
    assert report.unfused > 0
    got = unet_out(model, dtype)
    error = float((got.double() - expected.double()).abs().max() / expected.double().abs().max())
    assert error <= TOLERANCE[dtype], error
    assert error > 0  # really another computation, not the fused weights
    # the scheduled LoRA wrote no UNet weight: only the static one and the text encoder did
    static_modules = set(map(id, static.modules.values()))
    unet_parts = [c for k, cs in patcher.applied.items() if k[0] == "unet" for c in cs]
    assert unet_parts and all(id(c[0]) in static_modules for c in unet_parts)
    patcher.restore()
    assert_bit_equal(model, base)


def test_unfused_under_autocast_matches_fused(model) -> None:
    """A1111 runs the UNet under autocast on CUDA: a LayerNorm or GroupNorm hands an fp16 layer
    float32 input and the layer answers fp16, so the low-rank path met fp16 and float32 tensors in
    one in-place addmm and raised ('self and mat2 must have the same dtype'): every step-scheduled
    LoRA failed the generation. Here CPU autocast in bfloat16 over a float32 model."""
    adapter = make_adapter(model, 2, every=1)
    fused = Patcher(model)
    fused.sync([(adapter, 1.0, 0.6)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = unet_out(model)
    fused.restore()
    patcher = Patcher(model, schedules="unfused")
    assert patcher.sync([constant(adapter, 0.6)], step=1, total_steps=4).unfused > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = unet_out(model)
    assert got.dtype == expected.dtype
    error = float((got.double() - expected.double()).abs().max() / expected.double().abs().max())
    assert error <= TOLERANCE[torch.bfloat16], error
    patcher.restore()


@contextmanager
def manual_cast(target: torch.dtype):
    """What A1111's `devices.manual_cast` does on MPS, XPU and GTX 16xx cards (and with FP8 weight
    at float32 inference), mirrored from modules/devices.py v1.10.1: for the span of a generation,
    Linear, Conv2d, GroupNorm and LayerNorm get a class-level forward that casts inputs and
    parameters to `target` (inference dtype = target here)."""
    from torch import nn

    types = [nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm]
    originals = {t: t.forward for t in types}

    def wrapper(original):
        def forward(self, *args, **kwargs):
            args = tuple(a.to(target) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: v.to(target) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            org = next((p.dtype for p in self.parameters() if p.dtype != target), target)
            if org != target:
                self.to(target)
            result = original(self, *args, **kwargs)
            if org != target:
                self.to(org)
            return result
        return forward

    for t in types:
        t.forward = wrapper(originals[t])
    try:
        yield
    finally:
        for t in types:
            t.forward = originals[t]


def test_unfused_goes_through_a1111s_manual_cast(model) -> None:
    """The replaced forward called the class forward it found when the LoRA was hooked, so
    A1111's manual_cast, which patches nn.Linear/nn.Conv2d per generation, was bypassed on
    exactly the hooked modules: float32 input met bfloat16 weights and the generation failed on
    Macs (MPS), Intel (XPU) and GTX 16xx cards. The class's forward is now looked up per call."""
    model = {k: v.to(torch.bfloat16) for k, v in model.items()}
    adapter = make_adapter(model, 2, every=1)
    fused = Patcher(model)
    fused.sync([(adapter, 1.0, 0.6)])
    with manual_cast(torch.bfloat16):
        expected = unet_out(model)  # float32 inputs: the casts happen inside the layers
    fused.restore()
    patcher = Patcher(model, schedules="unfused")
    assert patcher.sync([constant(adapter, 0.6)], step=1, total_steps=4).unfused > 0
    with manual_cast(torch.bfloat16):
        got = unet_out(model)
    error = float((got.double() - expected.double()).abs().max() / expected.double().abs().max())
    assert error <= TOLERANCE[torch.bfloat16], error
    patcher.restore()


def test_a_schedule_changes_no_weight_between_steps_and_follows_each_steps_strength(model) -> None:
    base_out = unet_out(model)
    adapter = make_adapter(model, 2, every=1)
    patcher = Patcher(model, schedules="unfused")
    fused = Patcher(model)
    outs = []
    for step in range(4):
        report = patcher.sync([ramp(adapter, te=0.0)], step=step, total_steps=4)
        assert report.written == 0 and report.unfused > 0
        outs.append(unet_out(model))
    assert torch.equal(outs[0], base_out)  # strength 0: the hooks add nothing at all
    patcher.restore()
    for step in (1, 3):
        fused.sync([(adapter, 0.0, step / 4)])
        expected = unet_out(model)
        fused.restore()
        assert float((outs[step] - expected).abs().max() / expected.abs().max()) <= TOLERANCE[torch.float32]
    assert torch.equal(unet_out(model), base_out)  # restore removed every hook


def test_unfused_follows_a_model_cast_and_a_change_of_mode(model) -> None:
    adapter = make_adapter(model, 3, every=1)
    patcher = Patcher(model, schedules="unfused")
    patcher.sync([constant(adapter, 0.5)], step=0, total_steps=2)
    model = {k: v.double() for k, v in model.items()}  # the hooks cast their factors again
    got = unet_out(model, torch.float64)
    patcher.schedules = "fused"
    report = patcher.sync([constant(adapter, 0.5)], step=1, total_steps=2)
    assert report.unfused == 0 and report.written > 0
    expected = unet_out(model, torch.float64)
    assert float((got - expected).abs().max() / expected.abs().max()) <= TOLERANCE[torch.float64]
    patcher.schedules = "unfused"
    assert patcher.sync([constant(adapter, 0.5)], step=1, total_steps=2).unfused > 0
    assert float((unet_out(model, torch.float64) - expected).abs().max() / expected.abs().max()) <= TOLERANCE[torch.float64]


def test_a_bad_scheduled_lora_is_refused_before_anything_is_written(model) -> None:
    from loraprompt.errors import PatchError

    adapter = make_adapter(model, 4, every=1)
    bad = next(m for m in adapter.modules.values() if m.component == "unet")
    bad.tensors = {"up": bad.tensors["up"], "down": torch.ones(bad.tensors["down"].shape[0], 3)}
    good = make_adapter(model, 1)
    base, base_out = snapshot(model), unet_out(model)
    patcher = Patcher(model, schedules="unfused")
    with pytest.raises(PatchError, match="does not fit"):
        patcher.sync([(good, 1.0, 1.0), constant(adapter, 1.0)], step=0, total_steps=2)
    assert_bit_equal(model, base)
    assert torch.equal(unet_out(model), base_out)


def test_steps_with_the_same_entries_only_set_strengths_and_agree_with_a_full_sync(model) -> None:
    from tests.patcher.test_engine import count_ops

    scheduled, static = make_adapter(model, 2, every=1), make_adapter(model, 1)
    entries = [ramp(scheduled, te=0.5), (static, 1.0, 0.5)]
    patcher = Patcher(model, schedules="unfused")
    patcher.sync(entries, step=0, total_steps=4)
    outs = []
    for step in range(4):
        ops = count_ops(lambda s=step: patcher.sync(entries, step=s, total_steps=4), "aten::copy_", "aten::addmm")
        # no weight touched between steps: one copy, of the strength table compiled forwards read
        assert ops == {"aten::copy_": 1, "aten::addmm": 0}
        outs.append(unet_out(model))
    patcher.restore()
    other = Patcher(model, schedules="unfused")
    for step in range(4):  # new entry objects each time: the full sync
        report = other.sync([ramp(scheduled, te=0.5), (static, 1.0, 0.5)], step=step, total_steps=4)
        assert step == 0 or report.written == 0
        assert torch.equal(unet_out(model), outs[step]), step
    other.restore()


def test_weights_loaded_between_steps_are_noticed_at_the_next_full_sync(model) -> None:
    """Steps with the same entries look at nothing (no per-step cost over ~1000 weights): weights
    loaded in place between two steps are noticed at the next full sync instead. Until then the
    scheduled LoRA keeps running in the forward on the new weights; restore then keeps the new
    weights as the base (reported), and the next generation applies onto them."""
    from tests.patcher.helpers import reference
    from tests.patcher.test_engine import assert_close

    scheduled, static = make_adapter(model, 2, every=1), make_adapter(model, 1)
    entries = [ramp(scheduled, te=0.5), (static, 1.0, 0.5)]
    patcher = Patcher(model, schedules="unfused")
    patcher.sync(entries, step=0, total_steps=4)
    patcher.sync(entries, step=1, total_steps=4)
    other = tiny_sd1(seed=5)
    for name, component in model.items():
        component.load_state_dict(other[name].state_dict())
    loaded = snapshot(model)
    report = patcher.sync(entries, step=2, total_steps=4)
    assert report.written == 0 and report.diagnostics == []  # the fast path: nothing looked at
    ours = unet_out(model)
    twin = tiny_sd1(seed=5)  # the loaded weights with the scheduled LoRA fused at step 2's strength
    Patcher(twin).sync([(scheduled, 0.0, 2 / 4)])
    expected = unet_out(twin)
    assert float((ours - expected).abs().max() / expected.abs().max()) <= TOLERANCE[torch.float32]
    report = patcher.restore()
    assert [d.code for d in report.diagnostics] == ["lora-model-changed"]
    assert_bit_equal(model, loaded)
    patcher.sync([(static, 1.0, 0.5)])
    assert_close(model, reference(model, loaded, [(static, 1.0, 0.5)]), 1e-6)


def test_the_low_rank_path_leaves_the_module_as_it_found_it() -> None:
    """The unfused path replaces a module's forward (hooks would put every call on nn.Module's slow
    path): removing it restores the class forward, or the instance forward that was there before
    (accelerate's offload wrappers set one); a wrapper set on top of ours survives, ours inert."""
    from torch import nn

    from loraprompt.unfused import _Hook

    def factors(linear: nn.Linear) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.ones(linear.out_features, 2), torch.ones(2, linear.in_features))]

    x = torch.randn(3, 4)
    plain = nn.Linear(4, 5)
    expected = plain(x)
    hook = _Hook(plain, ("a",), factors(plain))  # type: ignore[arg-type]
    hook.strengths = [0.5]
    assert not torch.equal(plain(x), expected) and not plain._forward_hooks
    torch.testing.assert_close(plain(x), expected + 0.5 * x.sum(1, keepdim=True) * 2)
    hook.remove()
    assert "forward" not in plain.__dict__ and torch.equal(plain(x), expected)

    wrapped = nn.Linear(4, 5)
    calls: list[int] = []
    original = wrapped.forward

    def offload(*args, **kwargs):  # an instance forward set by someone else first
        calls.append(1)
        return original(*args, **kwargs)

    wrapped.forward = offload
    hook = _Hook(wrapped, ("a",), factors(wrapped))  # type: ignore[arg-type]
    hook.strengths = [1.0]
    wrapped(x)
    hook.remove()
    assert wrapped.forward is offload and len(calls) == 1

    hook = _Hook(wrapped, ("a",), factors(wrapped))  # type: ignore[arg-type]
    hook.strengths = [1.0]
    ours = wrapped.forward

    def on_top(*args, **kwargs):  # wrapped again on top of ours
        return ours(*args, **kwargs)

    wrapped.forward = on_top
    hook.remove()
    assert torch.equal(wrapped(x), nn.functional.linear(x, wrapped.weight, wrapped.bias))  # ours inert


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("where", ["cpu", pytest.param("cuda-fp16", marks=CUDA)])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
@pytest.mark.parametrize("case", ["linear", "linear-2d", "linear-two", "linear-rows", "conv1x1", "conv3x3-two",
                                  "conv-unbatched", "conv-channels-last"])
def test_every_path_of_the_low_rank_forward_adds_the_merged_delta(case: str, grad: bool, where: str) -> None:
    """Each way the forward adds the low-rank path (one LoRA over a whole Linear in place, the
    general loop, row slices, a Conv2d through a batched matmul over its channels, an unbatched or
    channels-last input, autograd on) gives the module with its weight merged: W + Σ s·up·down
    (in float32 on the CPU; on a GPU in fp16, cuBLAS's batched matmul with a broadcast up factor)."""
    from torch import nn

    from loraprompt.unfused import _Hook

    torch.manual_seed(0)
    conv = case.startswith("conv")
    module: nn.Module = nn.Conv2d(6, 8, 3 if "3x3" in case else 1, padding=1 if "3x3" in case else 0) if conv else nn.Linear(6, 8)
    kernel = module.weight.shape[1:]  # (in,) or (in, kh, kw)
    count = 2 if case.endswith("two") or case == "linear-rows" else 1
    rows = [(0, 5), (3, 8)] if case == "linear-rows" else None
    factors, merged = [], module.weight.detach().clone()
    strengths = [0.7, -0.4][:count]
    for i, s in enumerate(strengths):
        out = 8 if rows is None else rows[i][1] - rows[i][0]
        up, down = torch.randn(out, 3), torch.randn(3, int(torch.tensor(kernel).prod()))
        factors.append((up, down))
        delta = (s * up @ down).view(out, *kernel)
        if rows is None:
            merged += delta
        else:
            merged[rows[i][0] : rows[i][1]] += delta
    reference = nn.Conv2d(6, 8, module.kernel_size, padding=module.padding) if conv else nn.Linear(6, 8)  # type: ignore[arg-type]
    reference.load_state_dict({"weight": merged, "bias": module.bias.detach()})
    x = {"linear-2d": torch.randn(5, 6), "conv-unbatched": torch.randn(6, 5, 5)}.get(
        case, torch.randn(2, 6, 5, 5) if conv else torch.randn(2, 4, 6))
    if case == "conv-channels-last":
        module, reference = module.to(memory_format=torch.channels_last), reference.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    tol = 1e-5
    if where == "cuda-fp16":
        module, reference, x, tol = module.to("cuda", torch.float16), reference.to("cuda", torch.float16), x.to("cuda", torch.float16), 2e-2
    hook = _Hook(module, ("a", "b")[:count], factors, rows)  # type: ignore[arg-type]
    hook.strengths = strengths
    with torch.set_grad_enabled(grad):
        got, expected = module(x), reference(x)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    hook.strengths = [0.0] * count  # a LoRA at zero adds nothing, not even rounding
    with torch.set_grad_enabled(grad):
        assert torch.equal(module(x), type(module).forward(module, x))
