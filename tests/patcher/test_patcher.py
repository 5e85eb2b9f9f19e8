"""Patcher behaviour on tiny real models: exact restore, diffed sync, guards, lock, schedules."""

from __future__ import annotations

import threading

import pytest
import torch

from loraprompt import Patcher
from loraprompt.errors import FamilyMismatchError, PatchError
from loraprompt.plan import PlanEntry
from tests.fixtures.models import tiny_sd1, tiny_sdxl
from tests.patcher.helpers import (
    FailingPatcher,
    assert_bit_equal,
    make_adapter,
    patchable,
    reference,
    snapshot,
    to_dtype,
    tool_adapters,
)

TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def model() -> dict[str, torch.nn.Module]:
    return tiny_sd1()


def assert_close(components, expected: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    now = snapshot(components)
    for key, value in expected.items():
        torch.testing.assert_close(now[key].float(), value.float(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sync_matches_reference_and_restore_is_bit_exact(model, dtype) -> None:
    model = to_dtype(model, dtype)
    original = snapshot(model)
    a, b = make_adapter(model, 1, bias=True), make_adapter(model, 2, every=3)
    patcher = Patcher(model)
    plan = [(a, 0.7, -1.3), (b, 1.0, 0.5)]
    report = patcher.sync(plan)
    assert report.written == report.patched > 0
    assert_close(model, reference(model, original, plan), dtype)
    patcher.sync([(b, 0.2, 2.0)])
    assert_close(model, reference(model, original, [(b, 0.2, 2.0)]), dtype)
    patcher.restore()
    assert_bit_equal(model, original)
    assert patcher.backup_nbytes > 0
    assert patcher.sync([(b, 0.2, 2.0)]).written == len(patcher.applied)
    assert_close(model, reference(model, original, [(b, 0.2, 2.0)]), dtype)
    patcher.restore(release=True)
    assert_bit_equal(model, original)
    assert patcher.backup_nbytes == 0


@pytest.mark.parametrize(("applied", "assign"), [(True, False), (False, False), (True, True)])
def test_weights_loaded_in_place_or_replaced_become_the_new_base(model, applied, assign) -> None:
    a = make_adapter(model, 1)
    patcher = Patcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    if not applied:
        patcher.restore()
    other = tiny_sd1(seed=5)
    for name, component in model.items():
        component.load_state_dict(other[name].state_dict(), assign=assign)
    reloaded = snapshot(model)
    report = patcher.sync([(a, 0.5, 0.5)])
    assert [d.code for d in report.diagnostics] == ["lora-model-changed"]
    assert_close(model, reference(model, reloaded, [(a, 0.5, 0.5)]), torch.float32)
    patcher.restore()
    assert_bit_equal(model, reloaded)


def test_unchanged_entries_write_nothing_and_a_te_change_writes_only_the_te(model) -> None:
    a = make_adapter(model, 1)
    patcher = Patcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    assert patcher.sync([(a, 1.0, 1.0)]).written == 0
    unet_before = {k: v.clone() for k, v in model["unet"].state_dict().items()}
    report = patcher.sync([(a, 0.5, 1.0)])
    te_modules = [m for m in a.modules.values() if m.component == "text_encoder"]
    assert report.written == len(te_modules)
    for key, value in model["unet"].state_dict().items():
        assert torch.equal(value, unet_before[key])


def test_backups_hold_exactly_the_touched_weights(model) -> None:
    a = make_adapter(model, 3)
    patcher = Patcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    touched = {(k[0], k[1]) for k in patcher.applied}
    expected = sum(
        dict(model[c].named_modules())[name].weight.nbytes for c, name in touched
    )
    assert patcher.backup_nbytes == expected


def test_nan_in_an_adapter_refuses_the_sync_and_leaves_the_model(model) -> None:
    good, bad = make_adapter(model, 1), make_adapter(model, 2, name="broken")
    next(iter(bad.modules.values())).tensors["up"][0, 0] = float("nan")
    patcher = Patcher(model)
    patcher.sync([(good, 1.0, 1.0)])
    before = snapshot(model)
    with pytest.raises(PatchError, match=r"broken.*NaN or Inf"):
        patcher.sync([(good, 0.3, 0.3), (bad, 1.0, 1.0)])
    assert_bit_equal(model, before)
    patcher.restore()


def test_shape_mismatch_names_the_key_and_leaves_the_model(model) -> None:
    good, bad = make_adapter(model, 1), make_adapter(model, 2, name="misfit")
    module = next(m for m in bad.modules.values() if m.component == "unet")
    module.tensors["down"] = torch.randn(2, 3)
    original = snapshot(model)
    patcher = Patcher(model)
    with pytest.raises(PatchError, match=rf"misfit.*{module.lora_key}.*do not fit"):
        patcher.sync([(good, 1.0, 1.0), (bad, 1.0, 1.0)])
    assert_bit_equal(model, original)
    assert patcher.applied == {}


def test_skip_mode_applies_the_others_and_reports_the_bad_one(model) -> None:
    good, bad = make_adapter(model, 1), make_adapter(model, 2, name="misfit")
    next(m for m in bad.modules.values() if m.component == "unet").tensors["down"] = torch.randn(2, 3)
    original = snapshot(model)
    patcher = Patcher(model, on_error="skip")
    report = patcher.sync([(good, 1.0, 1.0), (bad, 1.0, 1.0)])
    assert report.skipped == ["misfit"]
    assert [d.code for d in report.diagnostics] == ["lora-refused"]
    assert_close(model, reference(model, original, [(good, 1.0, 1.0)]), torch.float32)


def test_family_mismatch_is_refused_naming_both_families(model) -> None:
    a = make_adapter(model, 1)
    a.family = "sdxl"
    patcher = Patcher(model, family="sd1")
    with pytest.raises(FamilyMismatchError, match=r"SDXL adapter; the loaded model is SD1.x"):
        patcher.sync([(a, 1.0, 1.0)])


@pytest.mark.parametrize("call, error, match", [
    (lambda m, a: Patcher(m["unet"]), TypeError, r"mapping of component name -> module.*not UNet2DConditionModel"),
    (lambda m, a: Patcher({"unet": "unet.safetensors"}), TypeError, r"component 'unet' is a str, not a torch"),
    (lambda m, a: Patcher(m, family="SD1"), ValueError, r"family must be one of sd1, sd2, sdxl.*not 'SD1'"),
    (lambda m, a: Patcher(m).sync([(a.path, 1.0, 1.0)]), TypeError, r"first item is an Adapter .*read_adapter.*not str"),
    (lambda m, a: Patcher(m).sync([a]), TypeError, r"not Adapter \(Adapter 'kohya': write \(adapter, te, unet\)\)$"),
    (lambda m, a: Patcher(m).sync([(a, None, 1.0)]), TypeError, r"strengths of 'kohya' must be numbers"),
    (lambda m, a: Patcher(m).sync([(a, 1.0, float("nan"))]), ValueError, r"strengths of 'kohya' must be finite"),
    (lambda m, a: Patcher({"unet": m["unet"], "te": m["text_encoder"]}), ValueError, r"unknown component name 'te'"),
    (lambda m, a: Patcher(m).sync([(a, float("inf"))]), ValueError, r"strengths of 'kohya' must be finite"),
])
def test_misused_arguments_are_refused_by_name(model, call, error, match) -> None:
    """A module for the mapping raised a bare KeyError ('items') from diffusers' config, a path in
    a plan entry AttributeError ('str' object has no attribute 'name'), a bare adapter a TypeError
    whose message printed every tensor of the file, and family="SD1" refused every file as "a SD1.x
    adapter; the loaded model is SD1". The model is untouched."""
    adapter = tool_adapters()[0]
    original = snapshot(model)
    with pytest.raises(error, match=match):
        call(model, adapter)
    assert_bit_equal(model, original)


def test_adapter_for_another_model_matching_nothing_is_refused(model) -> None:
    other = make_adapter(tiny_sdxl(), 1, name="xl")
    for module in other.modules.values():
        module.path = "input_blocks_99_" + module.path
    with pytest.raises(PatchError, match=r"xl .*none of its \d+ modules matches"):
        Patcher(model).sync([(other, 1.0, 1.0)])


def test_unmapped_keys_are_one_diagnostic_per_adapter(model) -> None:
    a = make_adapter(model, 1)
    extra = make_adapter(model, 2)
    for module in list(extra.modules.values())[:5]:
        module.path = "nowhere_" + module.path
        a.modules[module.lora_key] = module
    report = Patcher(model).sync([(a, 1.0, 1.0)])
    assert [d.code for d in report.diagnostics] == ["lora-unmapped"]
    assert "5 of" in report.diagnostics[0].message


@pytest.mark.parametrize("fail_at", [1, 5, 40])
def test_a_failure_mid_write_puts_every_weight_back(model, fail_at) -> None:
    a, b, c = (make_adapter(model, s) for s in (1, 2, 3))
    patcher = FailingPatcher(model)
    patcher.sync([(a, 1.0, 0.5)])
    before, applied = snapshot(model), patcher.applied
    patcher.fail_at = fail_at
    with pytest.raises(RuntimeError, match="injected"):
        patcher.sync([(b, 0.4, 1.0), (c, 1.0, 1.0)])
    assert_bit_equal(model, before)
    assert patcher.applied == applied


def test_a_failure_mid_write_says_which_weight_and_lora(model) -> None:
    a, b = make_adapter(model, 1, name="first"), make_adapter(model, 2, name="second")
    patcher = FailingPatcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    before = snapshot(model)
    patcher.fail_at = 3
    with pytest.raises(RuntimeError, match="injected") as info:
        patcher.sync([(b, 0.5, 0.5)])
    (note,) = info.value.__notes__
    assert "while writing " in note and "second (/virtual/second.safetensors)" in note and "first" not in note
    assert "as it was before this sync" in note
    assert_bit_equal(model, before)
    patcher.sync([(b, 0.5, 0.5)])  # nothing stale: the same sync works once the fault is gone
    assert patcher.applied and all(len(c) == 1 for c in patcher.applied.values())


def test_after_ctrl_c_mid_write_a_later_error_names_no_stale_weight(model, monkeypatch) -> None:
    a = make_adapter(model, 1)
    patcher = FailingPatcher(model)
    before = snapshot(model)
    patcher.fail_at = 2

    def interrupted(key, parts):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(patcher, "_write", interrupted)
        with pytest.raises(KeyboardInterrupt):
            patcher.sync([(a, 1.0, 1.0)])
    assert_bit_equal(model, before)

    def broken_check(key, contributions):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the checks")

    monkeypatch.setattr(patcher, "_checked", broken_check)
    with pytest.raises(RuntimeError, match="a bug in the checks") as info:
        patcher.sync([(a, 0.5, 0.5)])
    assert not getattr(info.value, "__notes__", None)  # no write failed in this sync: nothing to name


class RefusingAtWrite(Patcher):
    """Refuses one adapter's module only when its weight is written (a delta too big to keep between
    the check and the write is computed again then), as a module that fails to build would."""

    refuse: object = None

    def _write(self, key, parts):  # type: ignore[no-untyped-def]
        from loraprompt.combine import module_error

        for module, _, _ in self._applied_next.get(key, ()):
            if module in self.refuse.modules.values():  # type: ignore[attr-defined]
                raise module_error(module, ".".join(key), "refused at write (injected)")
        super()._write(key, parts)

    def _write_all(self, changed, plan, parts, items=()):  # type: ignore[no-untyped-def]
        self._applied_next = plan
        super()._write_all(changed, plan, parts, items)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_lora_refused_at_write_is_named_and_skippable(model, on_error) -> None:
    a, b, c = (make_adapter(model, s, name=n) for s, n in ((1, "a"), (2, "bad"), (3, "c")))
    patcher = RefusingAtWrite(model, on_error=on_error)
    patcher.refuse = b
    before = snapshot(model)
    if on_error == "raise":
        with pytest.raises(PatchError, match=r"^bad \(/virtual/bad.safetensors\): .*refused at write"):
            patcher.sync([(a, 1.0, 1.0), (b, 1.0, 1.0), (c, 1.0, 1.0)])
        assert_bit_equal(model, before)
        assert patcher.applied == {}
        return
    report = patcher.sync([(a, 1.0, 1.0), (b, 1.0, 1.0), (c, 1.0, 1.0)])
    assert report.skipped == ["bad"] and [d.code for d in report.diagnostics] == ["lora-refused"]
    expected = reference(model, before, [(a, 1.0, 1.0), (c, 1.0, 1.0)])
    now = snapshot(model)
    for key, value in expected.items():
        torch.testing.assert_close(now[key], value, rtol=1e-6, atol=1e-6)


def test_forget_drops_backups_without_writing(model) -> None:
    a = make_adapter(model, 1)
    patcher = Patcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    patched = snapshot(model)
    patcher.forget()
    assert patcher.backup_nbytes == 0 and patcher.applied == {}
    assert_bit_equal(model, patched)


def test_block_weights_and_base_scale_per_block(model) -> None:
    a = make_adapter(model, 1, every=1)
    original = snapshot(model)
    patcher = Patcher(model)
    patcher.sync([PlanEntry(a, te=1.0, unet=1.0, blocks={"BASE": 0.0, "IN01": 0.0, "OUT03": 2.0})])
    down0 = [k for k in original if k.startswith("unet:down_blocks.0.attentions.0.") and k.endswith("weight")]
    up1 = "unet:up_blocks.1.attentions.0.proj_in.weight"
    assert down0 and all(torch.equal(snapshot(model)[k], original[k]) for k in down0)
    assert all(torch.equal(v, original[k]) for k, v in snapshot(model).items() if k.startswith("text_encoder:"))
    expected = reference(model, original, [(a, 0.0, 2.0)])[up1]
    torch.testing.assert_close(snapshot(model)[up1], expected)


def test_schedules_rewrite_only_what_changes_per_step(model) -> None:
    a, b = make_adapter(model, 1), make_adapter(model, 2)
    gated = PlanEntry(b, unet_at=lambda step, total: 1.0 if 2 <= step < 4 else 0.0, te_at=lambda s, n: 0.0)
    ramp = PlanEntry(a, te=1.0, unet_at=lambda step, total: step / (total - 1))
    original = snapshot(model)
    patcher = Patcher(model)
    unet_a = sum(1 for m in a.modules.values() if m.component == "unet")
    written = [patcher.sync([ramp, gated], step=s, total_steps=5).written for s in range(5)]
    assert written[1] == unet_a  # only the ramp's UNet weights change from step 0 to 1
    expected = reference(model, original, [(a, 1.0, 1.0)])
    assert_close(model, expected, torch.float32)
    patcher.restore()
    assert_bit_equal(model, original)


def test_two_threads_never_see_each_others_adapters(model) -> None:
    a, b = make_adapter(model, 1), make_adapter(model, 2)
    patcher = Patcher(model)
    tokens = torch.arange(8)[None]
    te = model["text_encoder"]

    def encode() -> torch.Tensor:
        with torch.no_grad():
            return te(tokens).last_hidden_state.clone()

    solo = {}
    for name, adapter in (("a", a), ("b", b)):
        with patcher.activated([(adapter, 1.0, 1.0)]):
            solo[name] = encode()
    results: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def run(name, adapter) -> None:
        for _ in range(20):
            with patcher.activated([(adapter, 1.0, 1.0)]):
                results[name].append(encode())

    threads = [threading.Thread(target=run, args=x) for x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not torch.equal(solo["a"], solo["b"])
    for name in ("a", "b"):
        assert all(torch.equal(r, solo[name]) for r in results[name])


def test_strength_change_reuses_the_cached_unit_delta(model) -> None:
    a = make_adapter(model, 1)
    calls = 0
    for module in a.modules.values():
        original_delta = module.delta

        def counting(weight, strength, bias=None, _d=original_delta):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return _d(weight, strength, bias)

        module.delta = counting  # type: ignore[method-assign]
    patcher = Patcher(model)
    for strength in (1.0, 0.5, -0.25, 1.0):
        patcher.sync([(a, strength, strength)])
    assert calls == len(a.modules)
    patcher.restore()
    uncached = Patcher(model, delta_cache_mb=0)
    for strength in (1.0, 0.5):
        uncached.sync([(a, strength, strength)])
    # without a cache each delta is computed to check it, dropped, and computed again to write it,
    # so that at most one weight's delta is held at a time
    assert calls == (1 + 2 * 2) * len(a.modules)


def _every_kind(model: dict, adapters: tuple, every: int = 4) -> tuple:
    """The adapters on every `every`-th module of each kind (component, Linear or conv and its
    kernel), the same modules in each, so that picks overlap as the whole files do: every format
    on every kind of weight, at a quarter of the Python work per cycle (the whole files made this
    test 380 s of CI's time)."""
    import dataclasses

    kinds: dict[tuple, list[str]] = {}
    for component, module in model.items():
        for name, sub in module.named_modules():
            if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)):
                kind = (component, type(sub).__name__, getattr(sub, "kernel_size", None))
                kinds.setdefault(kind, []).append(f"{component}/{name.replace('.', '_')}")
    keep = {key for keys in kinds.values() for key in keys[::every]}
    thinned = tuple(dataclasses.replace(a, modules={k: m for k, m in a.modules.items() if k in keep}) for a in adapters)
    for full, thin in zip(adapters, thinned):  # every kind the whole file targets is still targeted
        def targeted(a):
            return {kind for kind, keys in kinds.items() if set(keys) & set(a.modules)}
        assert targeted(thin) == targeted(full) and 0 < len(thin.modules) < len(full.modules), full.path
    return thinned


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_thousand_cycles_restore_bit_exactly_every_time(dtype) -> None:
    from tests.patcher.helpers import tool_adapters

    model = to_dtype(tiny_sd1(), dtype)  # the UNet too: its convs take other paths (LoCon, LoHa/LoKr conv)
    original = snapshot(model)
    adapters = _every_kind(model, tool_adapters())
    patcher = Patcher(model)
    gen = torch.Generator().manual_seed(0)
    for cycle in range(1000):
        picks = torch.randint(0, len(adapters), (2,), generator=gen).tolist()
        strengths = (torch.randint(-4, 5, (2,), generator=gen) / 4).tolist()
        patcher.sync([(adapters[picks[0]], strengths[0], 1.0)])
        patcher.sync([(adapters[i], s, 1.0) for i, s in zip(picks, strengths)])
        patcher.restore(release=cycle % 7 == 0)
        assert_bit_equal(model, original)


def test_backups_follow_a_model_cast_while_patched(model) -> None:
    a = make_adapter(model, 1)
    original = snapshot(model)
    patcher = Patcher(model)
    patcher.sync([(a, 1.0, 1.0)])
    for component in model.values():
        component.to(torch.float16)
    report = patcher.restore()
    assert not report.diagnostics
    assert_bit_equal(model, {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in original.items()})
    patcher.sync([(a, 0.5, 0.5)])
    half = {k: v.to(torch.float16) for k, v in original.items()}
    assert_close(model, reference(model, half, [(a, 0.5, 0.5)]), torch.float16)


@pytest.mark.parametrize(("release", "keep"), [(False, True), (True, True), (False, False)])
def test_weight_dependent_deltas_follow_weights_loaded_in_place(model, release, keep) -> None:
    from loraprompt.adapters.algorithms.ia3 import IA3Module
    from loraprompt.adapters.types import Adapter
    from tests.patcher.helpers import patchable

    name, module = patchable(model["unet"])[0]
    ia3 = IA3Module("unet", name.replace(".", "_"), "ia3", {"weight": torch.full((module.weight.shape[0],), 0.5)})
    adapter = Adapter("/virtual/ia3.safetensors", "ia3", "test", {ia3.lora_key: ia3})
    patcher = Patcher(model, keep_backups=keep)
    patcher.sync([(adapter, 1.0, 1.0)])
    patcher.restore(release=release)
    other = tiny_sd1(seed=5)
    model["unet"].load_state_dict(other["unet"].state_dict())
    reloaded = snapshot(model)
    patcher.sync([(adapter, 1.0, 1.0)])
    assert_close(model, reference(model, reloaded, [(adapter, 1.0, 1.0)]), torch.float32)


def test_fp8_files_apply_like_their_float32_values(model, tmp_path) -> None:
    from loraprompt.adapters import read_adapter
    from tests.fixtures.loras import write_kohya_lora

    lora = write_kohya_lora("sd1", tmp_path / "f8.safetensors", dtype=torch.float8_e4m3fn)
    adapter = read_adapter(lora.path)
    assert {t.dtype for m in adapter.modules.values() for t in m.tensors.values()} == {torch.float8_e4m3fn}
    original = snapshot(model)
    report = Patcher(model).sync([(adapter, 1.0, 1.0)])
    assert report.patched > 0
    assert_close(model, reference(model, original, [(adapter, 1.0, 1.0)]), torch.float32)


def test_skip_mode_skips_an_adapter_whose_target_is_not_floating_point(model) -> None:
    good, bad = make_adapter(model, 1), make_adapter(model, 2, name="intlora")
    target = next(m for m in bad.modules.values() if m.component == "unet")
    module = model["unet"].get_submodule(next(n for n, _ in patchable(model["unet"]) if n.replace(".", "_") == target.path))
    module.weight = torch.nn.Parameter(torch.zeros(module.weight.shape, dtype=torch.int32), requires_grad=False)
    original = snapshot(model)
    with pytest.raises(PatchError, match=r"intlora \(/virtual/intlora\.safetensors\).*floating-point"):
        Patcher(model).sync([(good, 1.0, 1.0), (bad, 1.0, 1.0)])
    assert_bit_equal(model, original)
    report = Patcher(model, on_error="skip").sync([(good, 1.0, 1.0), (bad, 1.0, 1.0)])
    assert report.skipped == ["intlora"]
    assert "intlora.safetensors" in report.diagnostics[-1].message
    assert_close(model, reference(model, original, [(good, 1.0, 1.0)]), torch.float32)


@pytest.mark.parametrize(("build", "model_family", "lora_family", "names"),
                         [(tiny_sd1, "sd1", "sdxl", ("SDXL", "SD1.x")), (tiny_sdxl, "sdxl", "sd1", ("SD1.x", "SDXL"))])
def test_another_familys_lora_in_a_prompt_leaves_the_model_or_is_skipped(build, model_family, lora_family, names) -> None:
    """Robustness rules 9 and 10: a LoRA of another family in a prompt is refused naming both
    families and the file, and nothing of the prompt is applied (never a partial apply); with
    on_error='skip' it is the one dropped and the prompt's other LoRAs apply."""
    model = build()
    original = snapshot(model)
    good, other = make_adapter(model, 1), make_adapter(model, 2, name="wrongfamily")
    other.family = lora_family
    patcher = Patcher(model, family=model_family)
    patcher.sync([(good, 1.0, 1.0)])
    before, applied = snapshot(model), patcher.applied
    with pytest.raises(FamilyMismatchError, match=rf"wrongfamily \(/virtual/wrongfamily\.safetensors\) is a {names[0]} adapter; "
                                                  rf"the loaded model is {names[1]}"):
        patcher.sync([(good, 0.5, -0.5), (other, 1.0, 1.0)])
    assert_bit_equal(model, before)
    assert patcher.applied == applied
    report = patcher.sync([(good, 0.5, -0.5), (other, 1.0, 1.0)], on_error="skip")
    assert report.skipped == ["wrongfamily"] and [d.code for d in report.diagnostics] == ["lora-refused"]
    assert_close(model, reference(model, original, [(good, 0.5, -0.5)]), torch.float32)
    patcher.restore()
    assert_bit_equal(model, original)


def test_changed_block_weights_and_strengths_are_never_served_from_a_stale_cache(model) -> None:
    """Robustness rule 15: after any sequence of block weights and strengths, the weights are what
    a fresh patcher gives for the last plan on the original model."""
    import copy

    a, b = make_adapter(model, 1, every=1), make_adapter(model, 2)
    pristine = copy.deepcopy(model)
    original = snapshot(model)
    patcher = Patcher(model)
    up1 = "unet:up_blocks.1.attentions.0.proj_in.weight"
    plans = [
        [PlanEntry(a, te=1.0, unet=1.0, blocks={"OUT03": 2.0})],
        [PlanEntry(a, te=1.0, unet=1.0, blocks={"OUT03": 0.5})],
        [PlanEntry(a, te=1.0, unet=1.0, blocks={"BASE": 0.0, "OUT03": 0.5}), PlanEntry(b, te=0.3, unet=0.3)],
        [PlanEntry(a, te=1.0, unet=1.0)],
        [PlanEntry(a, te=-0.7, unet=0.4, blocks={"IN01": 0.0, "OUT03": 3.0}), PlanEntry(b, te=0.3, unet=0.6)],
        [PlanEntry(a, te=1.0, unet=1.0, blocks={"OUT03": 2.0})],
    ]
    for plan in plans:
        patcher.sync(plan)
        fresh_model = copy.deepcopy(pristine)
        Patcher(fresh_model, delta_cache_mb=0).sync(plan)
        assert_close(model, snapshot(fresh_model), torch.float32)
    # the last plan, checked against the independent reference too
    torch.testing.assert_close(snapshot(model)[up1], reference(model, original, [(a, 0.0, 2.0)])[up1])
    patcher.restore()
    assert_bit_equal(model, original)


def test_a_second_patcher_on_patched_weights_is_refused_and_turns_are_fine(model) -> None:
    """Two Patchers on one model take each other's writes for the base: with both applying one
    LoRA it was applied twice, and after both restores the weights were not the original. The
    second is refused by name before it writes; Patchers that take turns (each restoring before
    the next applies) work, and a forgotten or garbage-collected one holds nothing."""
    import gc

    adapter = make_adapter(model, 1)
    original = snapshot(model)
    first, second = Patcher(model), Patcher(model)
    first.sync([(adapter, 1.0, 1.0)])
    applied = snapshot(model)
    with pytest.raises(PatchError, match=r"is patched by another Patcher now.*one Patcher per model"):
        second.sync([(adapter, 1.0, 1.0)])
    assert_bit_equal(model, applied)  # the refused sync wrote nothing
    first.restore()
    assert_bit_equal(model, original)
    second.sync([(adapter, 1.0, 1.0)])  # its turn: the first holds nothing now
    assert_bit_equal(model, applied)
    with pytest.raises(PatchError, match="another Patcher"):
        first.sync([(adapter, 0.5, 0.5)])
    second.forget()  # the model was replaced, as far as the second one knows: it claims nothing
    first.sync([(adapter, 1.0, 1.0)])
    first.forget()
    third = Patcher(model)
    del first, second
    gc.collect()
    third.sync([])  # nothing to do, nothing refused
    assert third.sync([(adapter, 0.0, 0.0)]).written == 0


def test_a_patcher_whose_weights_were_written_behind_its_back_claims_nothing(model) -> None:
    """A weight written behind a patcher's back becomes its new base (robustness rule 15): the
    patcher no longer counts it as patched, so another Patcher may take it."""
    adapter = make_adapter(model, 1)
    first = Patcher(model)
    first.sync([(adapter, 1.0, 1.0)])
    with torch.no_grad():
        for module in model.values():
            for p in module.parameters():
                p.add_(0)  # an in-place write: every tensor's version moves
    first.sync([])  # nothing of first's is left to restore: the weights are the new base
    written = snapshot(model)
    second = Patcher(model)
    second.sync([(adapter, 1.0, 1.0)])
    second.restore()
    assert_bit_equal(model, written)


def test_sync_takes_parsed_activations_with_their_schedules(model) -> None:
    """A tool that parses a prompt and reads the files itself hands (adapter, activation) pairs to
    sync: strengths, te/unet and stop= follow the tag, as loraprompt.activate does."""
    import loraprompt

    adapter = make_adapter(model, 1, name="style")
    original = snapshot(model)
    (activation,) = loraprompt.parse("a cat <lora:style:0.5:1:stop=5>").loras
    patcher = Patcher(model)
    patcher.sync([(adapter, activation)], step=0, total_steps=10)
    expected = reference(model, original, [(adapter, 0.5, 1.0)])
    assert_close(model, expected, torch.float32)
    report = patcher.sync([(adapter, activation)], step=5, total_steps=10)  # stop=5: the LoRA ends there
    assert report.written > 0 and activation.unet_at(5, 10) == 0.0
    expected = reference(model, original, [(adapter, activation.te_at(5, 10), activation.unet_at(5, 10))])
    assert_close(model, expected, torch.float32)
    patcher.restore()
    assert_bit_equal(model, original)


def test_check_says_what_a_sync_would_refuse_without_writing(model) -> None:
    """A UI greying out LoRAs that cannot apply to the loaded model learned it only from a real
    sync. check() resolves each entry against the model (family, modules matched, keys left) and
    answers the diagnostics a sync would give, writing and keeping nothing."""
    good, partial = make_adapter(model, 1, name="good"), make_adapter(model, 2, name="partial")
    extra = make_adapter(model, 3)
    for module in list(extra.modules.values())[:5]:
        module.path = "nowhere_" + module.path
        partial.modules[module.lora_key] = module
    xl = make_adapter(tiny_sdxl(), 4, name="xl")
    xl.family = "sdxl"  # as the reader finds it from the keys and shapes of a real SDXL file
    original = snapshot(model)
    patcher = Patcher(model)
    assert patcher.check([(good, 1.0)]) == []
    found = patcher.check([(good, 1.0), (partial, 0.5, 1.0), (xl, 1.0)])
    assert [(d.code, d.severity) for d in found] == [("lora-unmapped", "warning"), ("lora-refused", "error")]
    assert "5 of" in found[0].message and "xl" in found[1].message and "SDXL" in found[1].message
    assert_bit_equal(model, original)
    assert patcher.applied == {} and patcher.backup_nbytes == 0
    report = patcher.sync([(good, 1.0, 1.0), (partial, 0.5, 1.0)])  # the check left nothing behind
    assert [d.code for d in report.diagnostics] == ["lora-unmapped"]
    patcher.restore()
    assert_bit_equal(model, original)
