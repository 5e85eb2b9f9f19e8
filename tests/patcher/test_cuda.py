"""The patcher on a real GPU: backups on the device or in pinned host memory, models moved between
the CPU and the GPU, fp8 weights, unfused schedules, nothing read back per weight. Skipped without
CUDA (benchmarks/gpu_run.sh runs them on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from loraprompt import Patcher
from tests.fixtures.models import tiny_sd1
from tests.patcher.helpers import assert_bit_equal, reference, snapshot
from tests.patcher.test_engine import make_adapter
from tests.patcher.test_unfused import constant

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def on_gpu(dtype: torch.dtype = torch.float16) -> dict[str, torch.nn.Module]:
    return {k: v.to("cuda", dtype) for k, v in tiny_sd1().items()}


def assert_close(model, expected, dtype) -> None:
    now = snapshot(model)
    for key, value in expected.items():
        torch.testing.assert_close(now[key].float(), value.float(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("backups", ["device", "host", "auto"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_backups_where_asked_and_restore_bit_exact(backups, dtype) -> None:
    model = on_gpu(dtype)
    original = snapshot(model)
    a, b = make_adapter(model, 1), make_adapter(model, 2)
    patcher = Patcher(model, backups=backups, reserve_mb=0)
    report = patcher.sync([(a, 1.0, 0.5)])
    if backups == "host":
        assert report.backups["device"] == 0 and report.backups["host"] == patcher.backup_nbytes
        assert all(t.is_pinned() for _, pair in patcher._store.items() for t in pair if t is not None)
    else:  # a tiny model always fits
        assert report.backups == {"device": patcher.backup_nbytes, "host": 0}
    patcher.sync([(b, 0.7, 0.7), (a, 0.2, 0.3)])
    assert_close(model, reference(model, original, [(b, 0.7, 0.7), (a, 0.2, 0.3)]), dtype)
    patcher.restore()
    assert_bit_equal(model, original)


def test_host_backups_keep_the_factors_off_the_card_too() -> None:
    """The VRAM target of host backups (issue 11: ≤ 64 MiB + the largest weight in float32): the
    H200 run held 1297 MiB on SDXL while the factor cache kept LoRA factors on the card."""
    model = on_gpu()
    original = snapshot(model)
    a, b = make_adapter(model, 1, every=1), make_adapter(model, 2, every=1)
    patcher = Patcher(model, backups="host")
    patcher.sync([(a, 1.0, 1.0)])
    patcher.sync([(b, 0.5, 0.5), (a, 0.3, 0.3)])
    cached = [t for entry, _, _ in patcher._deltas._entries.values() for t in entry if t is not None]
    assert cached and all(t.device.type == "cpu" and t.is_pinned() for t in cached)
    assert_close(model, reference(model, original, [(b, 0.5, 0.5), (a, 0.3, 0.3)]), torch.float16)
    patcher.restore()
    assert_bit_equal(model, original)


def test_auto_keeps_backups_on_the_host_without_room() -> None:
    model = on_gpu()
    free, _ = torch.cuda.mem_get_info()
    patcher = Patcher(model, backups="auto", reserve_mb=free / 2**20 + 1)
    report = patcher.sync([(make_adapter(model, 1), 1.0, 1.0)])
    assert report.backups["device"] == 0 and report.backups["host"] > 0


def test_a_model_moved_between_cpu_and_gpu_between_syncs() -> None:
    model = on_gpu()
    original = snapshot(model)
    a, b = make_adapter(model, 1), make_adapter(model, 2)
    patcher = Patcher(model, backups="device")
    patcher.sync([(a, 1.0, 1.0)])
    backups = {k: v[0] for k, v in patcher._store.items()}
    for component in model.values():
        component.to("cpu")  # --lowvram: modules leave the card between uses
    report = patcher.sync([(b, 1.0, 1.0)])
    assert not report.diagnostics
    assert all(patcher._store.get(k)[0] is v and v.is_cuda for k, v in backups.items() if k in patcher._store)
    expected = reference(model, {k: v.cpu() for k, v in original.items()}, [(b, 1.0, 1.0)])
    assert_close(model, expected, torch.float16)
    for component in model.values():
        component.to("cuda")
    patcher.sync([(a, 1.0, 1.0)])
    assert_close(model, reference(model, original, [(a, 1.0, 1.0)]), torch.float16)
    patcher.restore()
    assert_bit_equal(model, original)


def test_fp8_weights_on_the_gpu() -> None:
    model = on_gpu(torch.float16)
    model["unet"].to(torch.float8_e4m3fn)
    original = snapshot(model)
    a = make_adapter(model, 1, every=1)
    patcher = Patcher(model, backups="host")
    patcher.sync([(a, 0.8, 0.8)])
    expected = reference(model, original, [(a, 0.8, 0.8)])
    now = snapshot(model)
    for key in (k for k in expected if k.startswith("unet:")):
        exact = expected[key].float()
        assert torch.equal(now[key].float(), exact.clamp(-448, 448).to(torch.float8_e4m3fn).float()) or \
            (now[key].float() - exact).abs().max() <= 0.07 * exact.abs().max(), key  # one fp8 step at most
    patcher.restore()
    assert_bit_equal(model, original)


def test_sync_reads_nothing_back_per_weight() -> None:
    model = on_gpu()
    a, b = make_adapter(model, 1, every=1), make_adapter(model, 2, every=1)
    patcher = Patcher(model, backups="host")
    patcher.sync([(a, 1.0, 1.0)])  # first use: factors and backups
    patcher.sync([(b, 1.0, 1.0)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call in the sync raises
    try:
        patcher.sync([(a, 0.5, 0.5), (b, 0.5, 0.5)])
        patcher.restore()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_unfused_schedule_on_the_gpu_matches_fused() -> None:
    model = on_gpu(torch.float32)
    adapter = make_adapter(model, 2, every=1)
    fused = Patcher(model)
    fused.sync([(adapter, 1.0, 0.6)])
    expected = unet_out_cuda(model["unet"])
    fused.restore()
    patcher = Patcher(model, schedules="unfused")
    assert patcher.sync([constant(adapter, 0.6)], step=0, total_steps=4).unfused > 0
    got = unet_out_cuda(model["unet"])
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4  # TF32 matmuls may be on
    patcher.restore()


def test_unfused_schedule_under_autocast_as_a1111_runs_it() -> None:
    """An fp16 model under CUDA autocast (A1111's default on NVIDIA): float32 norm outputs reach
    fp16 layers, whose low-rank path must add in the output's dtype."""
    model = on_gpu(torch.float16)
    adapter = make_adapter(model, 2, every=1)
    fused = Patcher(model)
    fused.sync([(adapter, 1.0, 0.6)])
    with torch.autocast("cuda"):
        expected = unet_out_cuda(model["unet"])
    fused.restore()
    patcher = Patcher(model, schedules="unfused")
    assert patcher.sync([constant(adapter, 0.6)], step=0, total_steps=4).unfused > 0
    with torch.autocast("cuda"):
        got = unet_out_cuda(model["unet"])
    assert float((got.float() - expected.float()).abs().max() / expected.float().abs().max()) <= 1e-2
    patcher.restore()


def unet_out_cuda(unet) -> torch.Tensor:
    from tests.fixtures.models import SD1_TEXT_WIDTH

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=gen).cuda()
    context = torch.randn(2, 5, SD1_TEXT_WIDTH, generator=gen).cuda()
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def test_unfused_steps_read_nothing_back() -> None:
    """The steps of a scheduled LoRA (strengths set, the compiled forwards' table copied from
    pinned memory) and a full sync of its hooks synchronise with nothing."""
    from tests.patcher.test_unfused import ramp

    model = on_gpu()
    adapter = make_adapter(model, 2, every=1)
    patcher = Patcher(model, schedules="unfused", backups="host")
    patcher.sync([ramp(adapter)], step=0, total_steps=4)  # first use: factors, casts, the table
    entries = [ramp(adapter)]
    patcher.sync(entries, step=0, total_steps=4)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for step in range(1, 4):
            assert patcher.sync(entries, step=step, total_steps=4).unfused > 0
        patcher.sync([ramp(adapter)], step=3, total_steps=4)  # new entry objects: the full sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    patcher.restore()


def test_a_scheduled_lora_compiled_on_the_gpu_compiles_once() -> None:
    from tests.patcher.test_compile import block_inputs, run, testing
    from tests.patcher.test_unfused import ramp

    torch._dynamo.reset()
    model = on_gpu()
    block = model["unet"].down_blocks[0]
    inputs = tuple(t.to("cuda", torch.float16) for t in block_inputs(model["unet"]))
    counter = testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, backend=counter)
    patcher = Patcher(model, schedules="unfused")
    entries = [ramp(make_adapter(model, 2, every=1))]
    for step in range(4):
        patcher.sync(entries, step=step, total_steps=4)
        got, eager = run(compiled, inputs).float(), run(block, inputs).float()
        assert float((got - eager).abs().max()) <= 1e-2 * float(eager.abs().max()), step  # fp16, other rounding order
    assert counter.frame_count == 1
    assert patcher._hooks.table is not None and patcher._hooks.table.is_cuda
    patcher.restore()
