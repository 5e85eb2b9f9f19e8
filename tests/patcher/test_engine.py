"""The engine on real devices, tested on the CPU: where backups live, one matmul per weight, no
host-device synchronisation per module, models that move, fp8 weights, out of memory mid-sync.
The CUDA variants are in test_cuda.py (skipped without a GPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from loraprompt import Patcher
from loraprompt.adapters.algorithms.lora import LoraModule
from loraprompt.adapters.types import Adapter
from loraprompt.errors import PatchError
from tests.fixtures.models import tiny_sd1
from tests.patcher.helpers import assert_bit_equal, reference, snapshot
from tests.patcher.helpers import make_adapter as make_plain


def make_adapter(components, seed: int, **kwargs) -> Adapter:
    """make_plain's adapter with the reader's own LoRA modules (written from their factors)."""
    plain = make_plain(components, seed, **kwargs)
    modules = {k: LoraModule(m.component, m.path, "lora", m.tensors, alpha=m.alpha) for k, m in plain.modules.items()}
    return replace(plain, modules=modules)

TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def model() -> dict[str, torch.nn.Module]:
    return tiny_sd1()


def assert_close(components, expected: dict[str, torch.Tensor], tol: float) -> None:
    now = snapshot(components)
    for key, value in expected.items():
        torch.testing.assert_close(now[key].float(), value.float(), rtol=tol, atol=tol)


def test_backups_setting_is_checked_and_the_report_gives_bytes_per_place(model) -> None:
    with pytest.raises(ValueError, match="backups must be one of auto, device, host"):
        Patcher(model, backups="gpu")
    a = make_adapter(model, 1)
    for backups in ("auto", "device", "host"):
        patcher = Patcher(model, backups=backups)
        report = patcher.sync([(a, 1.0, 1.0)])
        # weights on the CPU are backed up in CPU memory whatever the setting
        assert report.backups == {"device": 0, "host": patcher.backup_nbytes} and patcher.backup_nbytes > 0
        assert patcher.restore().backups == report.backups
    with pytest.raises(ValueError, match="backups must be one of"):
        patcher.backups = "gpu"
    assert patcher.backups == "host"
    fp32_bytes = patcher.backup_nbytes
    for component in model.values():  # cast between syncs: the backups are cast and counted again
        component.to(torch.bfloat16)
    report = patcher.sync([(a, 1.0, 0.5)])
    assert report.backups == {"device": 0, "host": fp32_bytes // 2} == patcher.backup_bytes
    patcher.restore(release=True)
    assert patcher.sync([]).backups == {"device": 0, "host": 0} and patcher.backup_nbytes == 0


def test_refused_pinned_memory_falls_back_to_pageable_with_one_diagnostic(model) -> None:
    # this torch has no pinned allocator: the fallback a GPU machine takes when pinning fails
    patcher = Patcher(model, backups="host")
    source = torch.arange(6.0)
    copies = [patcher._store._host_copy(source) for _ in range(2)]
    assert all(torch.equal(c, source) and not c.is_pinned() for c in copies)
    report = patcher.sync([(make_adapter(model, 1), 1.0, 1.0)])
    notes = [d for d in report.diagnostics if d.code == "lora-backups-pageable"]
    assert len(notes) == 1 and "ordinary host memory" in notes[0].message
    assert not [d for d in patcher.sync([]).diagnostics if d.code == "lora-backups-pageable"]


def count_ops(fn, *names: str) -> dict[str, int]:
    """How many times each aten op ran in fn (torch.profiler on the CPU)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts = {n: 0 for n in names}
    for event in prof.events():
        if event.name in counts:
            counts[event.name] += 1
    return counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_any_number_of_loras_is_one_matmul_per_weight(model, dtype) -> None:
    model = {k: v.to(dtype) for k, v in model.items()}
    original = snapshot(model)
    loras = [make_adapter(model, 1, every=1), make_adapter(model, 2, every=1, rank=3), make_adapter(model, 3, every=1)]
    patcher = Patcher(model)
    plan = [(a, 0.5 + i / 4, 1.0 - i / 3) for i, a in enumerate(loras)]
    counts = count_ops(lambda: patcher.sync(plan), "aten::addmm", "aten::addmm_", "aten::mm", "aten::item",
                       "aten::_local_scalar_dense", "aten::is_nonzero")
    report_weights = len(patcher.applied)
    # one matmul per weight: addmm into a float32 weight, mm then one add for fp16/bf16
    assert counts["aten::addmm"] + counts["aten::addmm_"] + counts["aten::mm"] == report_weights
    assert counts["aten::mm"] == (0 if dtype == torch.float32 else report_weights)
    # nothing read back per weight: no .item(), bool(tensor) or isfinite().all() in the sync
    assert counts["aten::item"] == counts["aten::_local_scalar_dense"] == counts["aten::is_nonzero"] == 0
    assert_close(model, reference(model, original, plan), TOL[dtype])
    patcher.restore()
    assert_bit_equal(model, original)


def test_stacked_factors_equal_separate_matmuls_within_a_rounding() -> None:
    from loraprompt.combine import combine_into

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=gen)
    parts = [(torch.randn(64, r, generator=gen), torch.randn(r, 48, generator=gen), None, s)
             for r, s in ((4, 0.7), (8, -1.2), (2, 0.3))]
    out = torch.empty_like(base)
    combine_into(out, base, parts)
    expected = base.double() + sum(s * (u.double() @ d.double()) for u, d, _, s in parts)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)


def test_a_model_moved_between_syncs_keeps_backups_and_caches(model) -> None:
    a, b = make_adapter(model, 1), make_adapter(model, 2)
    original = snapshot(model)
    patcher = Patcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    backups = {k: v[0] for k, v in patcher._store.items()}
    cached = patcher._deltas.nbytes
    for component in model.values():  # new storage for every tensor, as a move to another device gives
        component._apply(lambda t: t.clone())
    report = patcher.sync([(b, 0.5, 1.0)])
    assert not report.diagnostics  # nothing taken for a change made behind the patcher's back
    assert all(patcher._store.get(k)[0] is v for k, v in backups.items() if k in patcher._store)
    assert patcher._deltas.nbytes >= cached
    assert_close(model, reference(model, original, [(b, 0.5, 1.0)]), 1e-6)
    for component in model.values():
        component._apply(lambda t: t.clone())
    patcher.restore()
    assert_bit_equal(model, original)


def test_fp8_weights_are_dequantised_summed_in_float32_and_requantised_once(model) -> None:
    f8 = torch.float8_e4m3fn
    model = {k: v.to(f8) if k == "unet" else v for k, v in model.items()}
    original = snapshot(model)
    a, b = make_adapter(model, 1, every=1), make_adapter(model, 2, every=1)
    patcher = Patcher(model)
    patcher.sync([(a, 0.8, 0.8), (b, -0.5, -0.5)])
    expected = reference(model, original, [(a, 0.8, 0.8), (b, -0.5, -0.5)])
    now = snapshot(model)
    unet = [k for k in expected if k.startswith("unet:")]
    assert unet and all(now[k].dtype == f8 for k in unet)
    for key in unet:  # one rounding of the float32 sum: equal to quantising the float32 reference
        exact = (original[key].float() + (expected[key].float() - original[key].float()))
        assert torch.equal(now[key].float(), exact.clamp(-448, 448).to(f8).float()), key
    assert all(patcher._store.get(k)[0].dtype == f8 for k in patcher._store if k[0] == "unet")
    patcher.restore()
    assert_bit_equal(model, original)


def test_fp8_sum_saturates_instead_of_becoming_nan() -> None:
    from loraprompt.combine import combine_into

    base = torch.full((4, 4), 400.0).to(torch.float8_e4m3fn)
    out = torch.empty_like(base)
    combine_into(out, base, [(torch.ones(4, 2), torch.full((2, 4), 100.0), None, 1.0)])
    assert torch.equal(out.float(), torch.full((4, 4), 448.0))


def test_fp8_with_a_float16_copy_adds_the_deltas_to_the_copy(model) -> None:
    # A1111's "Cache FP16 weight for LoRA": each Linear keeps fp16_weight (CPU); loraprompt adds
    # every LoRA's delta to it (the built-in keeps only the last LoRA, A1111 #15995)
    f8 = torch.float8_e4m3fn
    unet = model["unet"]
    for module in unet.modules():
        if isinstance(module, torch.nn.Linear):
            module.fp16_weight = module.weight.detach().half().clone()
    unet.to(f8)
    original = snapshot(model)
    a = make_adapter(model, 1, every=1)
    patcher = Patcher(model, float_base=lambda m, p: getattr(m, f"fp16_{p}", None))
    patcher.sync([(a, 1.0, 1.0)])
    checked = 0
    for name, module in unet.named_modules():
        key = f"unet:{name}.weight"
        if isinstance(module, torch.nn.Linear) and any(m.path == name.replace(".", "_") for m in a.modules.values()):
            mod = next(m for m in a.modules.values() if m.path == name.replace(".", "_"))
            dw, _ = mod.delta(module.fp16_weight.float(), 1.0)
            assert torch.equal(module.weight, (module.fp16_weight.float() + dw).to(f8)), key
            checked += 1
    assert checked
    patcher.restore()
    assert_bit_equal(model, original)


class OutOfMemoryPatcher(Patcher):
    """Runs out of device memory on the `fail_at`-th weight write."""

    fail_at = -1

    def _write(self, key, parts):  # type: ignore[no-untyped-def]
        self.fail_at -= 1
        if self.fail_at == 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (injected)")
        super()._write(key, parts)


@pytest.mark.parametrize("fail_at", [1, 7])
def test_out_of_memory_mid_sync_leaves_the_model_and_says_how_much_and_what_to_change(model, fail_at) -> None:
    model = {k: v.half() for k, v in model.items()}
    a, b = make_adapter(model, 1), make_adapter(model, 2)
    original = snapshot(model)
    patcher = OutOfMemoryPatcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    before = snapshot(model)
    applied = patcher.applied
    patcher.fail_at = fail_at
    with pytest.raises(PatchError, match=r"out of memory on cpu.*the model is as it was.*needed about \d+ MiB") as info:
        patcher.sync([(b, 1.0, 1.0)])
    assert "backups='host'" in str(info.value) and "Where LoRA backups live" in str(info.value)
    assert "float32 scratch" in str(info.value)
    assert_bit_equal(model, before)
    assert patcher.applied == applied
    patcher.restore()
    assert_bit_equal(model, original)


def test_report_paths_and_backup_bytes_follow_every_change(model) -> None:
    """The report's paths and backup bytes are kept per changed weight (a sync costs O(changed));
    after any sequence, and after a cast behind the patcher's back, they equal a fresh count."""
    from loraprompt.quantized import weight_path

    a, b = make_adapter(model, 1), make_adapter(model, 2, every=1)
    patcher = Patcher(model)

    def fresh() -> dict[str, str]:
        return {".".join(k): weight_path(patcher._param(k)[0]) for k in patcher.applied}

    for plan in ([(a, 1.0, 1.0)], [(a, 1.0, 1.0), (b, 0.5, 0.5)], [(b, 1.0, 1.0)], [(a, 0.3, 0.3)], [], [(b, 1.0, 0.0)]):
        report = patcher.sync(plan)
        assert report.paths == fresh() and report.backups == patcher.backup_bytes
    assert report.paths and set(report.paths.values()) == {"in place (float32)"}
    for component in model.values():
        component.to(torch.bfloat16)
    report = patcher.sync([(b, 1.0, 0.0)])
    assert report.paths == fresh() and set(report.paths.values()) == {"in place (bfloat16)"}
    assert report.backups == patcher.backup_bytes
    assert patcher.sync([]).paths == {}
