"""The patcher on diffusion transformers in the dtypes Flux users run: bf16, fp8 (dequantised,
summed in float32, requantised once) and bitsandbytes NF4 (the LoRA unfused, beside the packed
weight). Each reports the path every patched weight took; restore is bit-exact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from loraprompt import Patcher, read_adapter
from loraprompt.plan import PlanEntry
from tests.fixtures import dit

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def flux_loras(tmp_path_factory: pytest.TempPathFactory) -> tuple[dit.PeftLora, dit.PeftLora]:
    root = tmp_path_factory.mktemp("flux")
    return dit.write_peft("flux", root / "a.safetensors", seed=1), dit.write_peft("flux", root / "b.safetensors", seed=2)


def _deltas(lora: dit.PeftLora, strength: float) -> dict[str, torch.Tensor]:
    """Weight name -> the float32 delta diffusers fuses (from a float32 model)."""
    base = dit.tiny_transformer("flux").state_dict()
    fused = dit.peft_fused(lora, strength)
    return {k: fused[k] - base[k] for k in base if not torch.equal(fused[k], base[k])}


def _ulps_apart(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance in representable steps of a's dtype between a and b (same dtype)."""
    view = {1: torch.int8, 2: torch.int16}[a.element_size()]
    return int((a.view(view).to(torch.int32) - b.view(view).to(torch.int32)).abs().max())


def _to_fp8(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.to(torch.float8_e4m3fn)
    return model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_low_precision_weights_are_summed_in_float32_and_cast_once(flux_loras: tuple, dtype: torch.dtype) -> None:
    a, b = flux_loras
    model = dit.tiny_transformer("flux", dtype=torch.bfloat16) if dtype == torch.bfloat16 else _to_fp8(dit.tiny_transformer("flux"))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    patcher = Patcher({"transformer": model})
    adapter_a, adapter_b = read_adapter(a.path), read_adapter(b.path)
    report = patcher.sync([(adapter_a, 0.8, 0.8)])
    name = str(dtype).removeprefix("torch.")
    expected_path = f"fp8 requantized ({name})" if dtype != torch.bfloat16 else f"in place ({name})"
    assert len(report.paths) == len(a.factors) and set(report.paths.values()) == {expected_path}
    once = {k: v.clone() for k, v in model.state_dict().items()}
    for key, delta in _deltas(a, 0.8).items():
        expected = (base[key].float() + delta).to(dtype)
        assert once[key].dtype == dtype and _ulps_apart(once[key], expected) <= 1, key
    for _ in range(3):  # switching back and forth never accumulates rounding: always from the backup
        patcher.sync([(adapter_b, 1.0, 1.0)])
        patcher.sync([(adapter_a, 0.8, 0.8)])
    assert all(torch.equal(v, once[k]) for k, v in model.state_dict().items())
    patcher.restore()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def _to_nf4(model: torch.nn.Module) -> torch.nn.Module:
    import bitsandbytes as bnb

    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child.in_features % 2 == 0:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.float32, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
                setattr(module, child_name, q.to("cpu"))
    return model


def _dequantized(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every NF4 weight dequantised into a float32 Linear."""
    import bitsandbytes as bnb

    plain = dit.tiny_transformer("flux")
    for (_name, module), (_, twin) in zip(model.named_modules(), plain.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            twin.weight.data = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            if module.bias is not None:
                twin.bias.data = module.bias.data.clone()
    return plain


def _flux_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return dict(
        hidden_states=torch.randn(1, 16, 8, generator=gen), encoder_hidden_states=torch.randn(1, 4, 16, generator=gen),
        pooled_projections=torch.randn(1, 12, generator=gen), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.0]),
        img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(4, 3),
    )


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_nf4_weights_get_the_lora_unfused_and_stay_untouched(flux_loras: tuple, layout: str, tmp_path: Path) -> None:
    """PEFT files, and kohya files whose fused q/k/v rows go to diffusers' to_q/to_k/to_v (the
    rows are counted on the weights' logical shapes, not on the packed bytes' (n/2, 1))."""
    a, _ = flux_loras
    path = a.path if layout == "peft" else dit.native_file(a, tmp_path / "kohya.safetensors", "kohya")
    model = _to_nf4(dit.tiny_transformer("flux"))
    packed = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = _flux_inputs()
    with torch.no_grad():
        before = model(**inputs).sample
    patcher = Patcher({"transformer": model})
    report = patcher.sync([(read_adapter(path), 0.8, 0.8)])
    assert set(report.paths.values()) == {"unfused (nf4)"} and len(report.paths) == len(a.factors)
    assert all(torch.equal(v, packed[k]) for k, v in model.state_dict().items())  # the packed bytes never change
    # the reference: the dequantised model with the LoRA fused in float32 by the ordinary path
    reference = _dequantized(model)
    Patcher({"transformer": reference}).sync([(read_adapter(path), 0.8, 0.8)])
    with torch.no_grad():
        ours, theirs = model(**inputs).sample, reference(**inputs).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, before)
    patcher.restore()
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, before)


def _ramp(adapter) -> PlanEntry:
    """A LoRA whose UNet (transformer) strength is step/total: 0 at step 0, as `<lora:x:0@0,1@1>`."""
    return PlanEntry(adapter, te=0.0, unet=0.0, unet_at=lambda s, n: s / n, name=adapter.name)


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())


def _follows_the_schedule(model: torch.nn.Module, reference: torch.nn.Module, adapter, tolerance: float) -> None:
    """`model` (schedules="unfused") against `reference` with the LoRA fused at each step's strength:
    within `tolerance` of the output's scale at every step, no weight written after the first
    sync, and every parameter's bytes the same throughout; restore gives the plain output back."""
    inputs = _flux_inputs()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(**inputs).sample
    patcher, fused = Patcher({"transformer": model}, schedules="unfused"), Patcher({"transformer": reference})
    entry = _ramp(adapter)
    for step in range(4):
        report = patcher.sync([entry], step=step, total_steps=4)
        assert report.written == 0 and report.unfused == len(adapter.modules)
        assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
        fused.sync([(adapter, 0.0, step / 4)])
        with torch.no_grad():
            ours, theirs = model(**inputs).sample, reference(**inputs).sample
        if step == 0:
            assert torch.equal(ours, before)  # strength 0: the forward adds nothing
        else:
            assert not torch.allclose(ours, before)
            assert _relative_error(ours, theirs) <= tolerance, (step, _relative_error(ours, theirs))
    patcher.restore()
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, before)


def test_a_scheduled_lora_on_a_transformer_runs_in_the_forward_and_writes_no_weight(flux_loras: tuple) -> None:
    """SD3/Flux/Wan: a LoRA whose strength follows the step is not rewritten into the weights at
    every step (one write per touched weight and step on Flux); it runs unfused, as on a UNet."""
    a, _ = flux_loras
    _follows_the_schedule(dit.tiny_transformer("flux"), dit.tiny_transformer("flux"), read_adapter(a.path), 1e-5)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_a_scheduled_lora_on_nf4_weights_runs_in_the_forward_and_leaves_the_bytes(flux_loras: tuple) -> None:
    """Packed 4-bit weights hold bytes, not the layer's shape: the schedule's factors are checked
    against the layer's logical shape and run beside the packed weight."""
    a, _ = flux_loras
    model = _to_nf4(dit.tiny_transformer("flux"))
    _follows_the_schedule(model, _dequantized(model), read_adapter(a.path), 1e-4)


@pytest.mark.parametrize("nf4", [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed"))])
def test_rows_of_a_fused_native_weight_run_in_the_forward(flux_loras: tuple, nf4: bool) -> None:
    """A model under Flux's native names (ComfyUI's and Forge's `img_attn.qkv`, `linear1`): a
    diffusers-named LoRA adds to rows of those fused weights. Scheduled, or constant on a packed
    NF4 weight, each LoRA adds only to its own rows of the module's output; every module's output
    equals the fused weights' (fp32, or the dequantised NF4 weight) within 1e-5 of its scale."""
    import torch.nn.functional as F

    a, _ = flux_loras
    adapter = read_adapter(a.path)
    native, _ = dit.native_model("flux")
    if nf4:
        native = _to_nf4(native)
    twin, _ = dit.native_model("flux")
    modules = dict(native.named_modules())
    if nf4:  # the reference holds the dequantised weights
        import bitsandbytes as bnb

        for name, m in twin.named_modules():
            packed = modules.get(name)
            if isinstance(packed, bnb.nn.Linear4bit):
                m.weight.data = bnb.functional.dequantize_4bit(packed.weight.data, packed.weight.quant_state).float()
    base = {k: v.clone() for k, v in native.state_dict().items()}
    patcher, fused = Patcher({"transformer": native}, schedules="unfused"), Patcher({"transformer": twin})
    gen = torch.Generator().manual_seed(4)
    checked = 0
    for step in range(1, 3):
        entry = (adapter, 0.8, 0.8) if nf4 else _ramp(adapter)
        report = patcher.sync([entry], step=step, total_steps=3)
        fused.sync([(adapter, 0.8, 0.8) if nf4 else (adapter, 0.0, step / 3)])
        assert report.unfused > 0 and (report.written == 0 or nf4)
        rows_hooked = [k for k, cs in patcher._hooks._hooks.items() if any(r is not None for r in cs._rows)]
        assert rows_hooked  # q/k/v (and linear1's) row slices are among them
        for name, reference in twin.named_modules():
            if isinstance(reference, torch.nn.Linear) and "forward" in vars(modules[name]):
                x = torch.randn(3, reference.in_features, generator=gen)
                with torch.no_grad():
                    ours, theirs = modules[name](x), F.linear(x, reference.weight, reference.bias)
                assert _relative_error(ours, theirs) <= 1e-5, name
                with torch.enable_grad():  # the path that adds out of place (autograd may hold the output)
                    assert _relative_error(modules[name](x).detach(), theirs) <= 1e-5, name
                checked += 1
    assert checked >= 2 * report.unfused
    assert all(torch.equal(v, base[k]) for k, v in native.state_dict().items())
    patcher.restore()
    assert not any("forward" in vars(m) for m in modules.values())


def _flux_loha(path: Path) -> Path:
    """A LyCORIS LoHa on Flux's fused `double_blocks.0.img_attn.qkv` (to_q/to_k/to_v of the tiny model)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(5)
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    shapes = {"hada_w1_a": (48, 4), "hada_w1_b": (4, 16), "hada_w2_a": (48, 4), "hada_w2_b": (4, 16)}
    tensors = {f"{key}.{name}": torch.randn(*shape, generator=gen) * 0.3 for name, shape in shapes.items()}
    tensors[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya", "modelspec.architecture": "flux-1-dev/lycoris"})
    return path


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_nf4_plain_loras_take_the_low_rank_forward_and_other_algorithms_a_hook(flux_loras: tuple, tmp_path: Path) -> None:
    """On packed weights, a plain LoRA runs as a scheduled one does (the module's forward replaced,
    two small matmuls); a LoHa (its delta is no low-rank product) runs in a forward hook. Together,
    with a scheduled LoRA on the same modules, they give the dequantised model's fused result at
    every step, and restore leaves neither."""
    a, b = flux_loras
    adapter_a, adapter_b = read_adapter(a.path), read_adapter(b.path)
    loha = read_adapter(_flux_loha(tmp_path / "loha.safetensors"))
    model = _to_nf4(dit.tiny_transformer("flux"))
    reference = _dequantized(model)
    packed = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    inputs = _flux_inputs()
    with torch.no_grad():
        before = model(**inputs).sample
    patcher, fused = Patcher({"transformer": model}, schedules="unfused"), Patcher({"transformer": reference})

    report = patcher.sync([(adapter_a, 0.7, 0.7)])
    assert report.unfused == report.patched == len(a.factors) and set(report.paths.values()) == {"unfused (nf4)"}
    assert sum("forward" in vars(m) for m in modules) == report.unfused and not any(m._forward_hooks for m in modules)
    report = patcher.sync([(loha, 0.5, 0.5)])
    assert report.unfused == 0 and report.patched == 3 and set(report.paths.values()) == {"unfused (nf4)"}
    assert not any("forward" in vars(m) for m in modules) and sum(bool(m._forward_hooks) for m in modules) == 3
    for step in range(3):
        patcher.sync([(adapter_a, 0.7, 0.7), (loha, 0.5, 0.5), _ramp(adapter_b)], step=step, total_steps=3)
        fused.sync([(adapter_a, 0.7, 0.7), (loha, 0.5, 0.5), (adapter_b, 0.0, step / 3)])
        with torch.no_grad():
            ours, theirs = model(**inputs).sample, reference(**inputs).sample
        assert _relative_error(ours, theirs) <= 1e-4, (step, _relative_error(ours, theirs))
    assert all(torch.equal(v, packed[k]) for k, v in model.state_dict().items())
    patcher.restore()
    assert not any(m._forward_hooks or "forward" in vars(m) for m in modules)
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, before)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_a_loha_on_nf4_weights_is_built_once_and_follows_strength_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 ΔW of a LoHa beside a packed weight is built when it is first hooked: a sync
    with the same LoRA, or a new strength, builds none again and keeps the hook, whose output then
    follows the new strength (against the dequantised model fused at it)."""
    loha = read_adapter(_flux_loha(tmp_path / "loha.safetensors"))
    from loraprompt import quantized

    built: list[tuple] = []  # the weight keys whose float32 ΔW was built
    factors = quantized._factors
    monkeypatch.setattr(quantized, "_factors", lambda m, module, key, rows: built.append(key) or factors(m, module, key, rows))
    model = _to_nf4(dit.tiny_transformer("flux"))
    reference = _dequantized(model)
    patcher, fused = Patcher({"transformer": model}), Patcher({"transformer": reference})
    assert patcher.sync([(loha, 0.5, 0.5)]).patched == 3
    assert len(built) == 3 * 2  # checked (split), then built (hooked): once per hooked weight each
    hooks = {name: dict(m._forward_hooks) for name, m in model.named_modules() if m._forward_hooks}
    assert len(hooks) == 3
    built.clear()
    inputs = _flux_inputs()
    for strength in (0.5, 0.3, -0.4):
        report = patcher.sync([(loha, strength, strength)])
        fused.sync([(loha, strength, strength)])
        assert built == [] and report.patched == 3
        assert {name: dict(m._forward_hooks) for name, m in model.named_modules() if m._forward_hooks} == hooks
        with torch.no_grad():
            ours, theirs = model(**inputs).sample, reference(**inputs).sample
        assert _relative_error(ours, theirs) <= 1e-4, (strength, _relative_error(ours, theirs))
    patcher.restore()
    assert not any(m._forward_hooks for m in model.modules())


def test_row_slices_and_swapped_halves_follow_in_bf16(tmp_path: Path) -> None:
    """A kohya Flux file (fused qkv, linear1, final-layer halves) on a bf16 model: each split
    piece is cast once into its own weight."""
    lora = dit.write_peft("flux", tmp_path / "p.safetensors")
    path = dit.native_file(lora, tmp_path / "k.safetensors", "kohya")
    model = dit.tiny_transformer("flux", dtype=torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    Patcher({"transformer": model}).sync([(read_adapter(path), 1.0, 1.0)])
    for key, delta in _deltas(lora, 1.0).items():
        assert _ulps_apart(model.state_dict()[key], (base[key].float() + delta).to(torch.bfloat16)) <= 1, key


def test_row_slices_share_one_down_factor_and_switches_reuse_the_factors(tmp_path: Path) -> None:
    """The q/k/v (and linear1) slices of a kohya Flux file's fused modules hold one copy of the
    module's down factor; the weights are the same bits as with factors made fresh every sync
    (no cache), and a switch back to a LoRA whose factors are kept makes none."""
    lora = dit.write_peft("flux", tmp_path / "p.safetensors")
    other = dit.write_peft("flux", tmp_path / "q.safetensors", seed=7)
    kohya = read_adapter(dit.native_file(lora, tmp_path / "k.safetensors", "kohya"))
    peft = read_adapter(other.path)
    cached, fresh = (dit.tiny_transformer("flux", dtype=torch.bfloat16) for _ in range(2))
    patcher, uncached = Patcher({"transformer": cached}), Patcher({"transformer": fresh}, delta_cache_mb=0)
    first = patcher.sync([(kohya, 0.7, 0.7)])
    uncached.sync([(kohya, 0.7, 0.7)])
    assert all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), fresh.state_dict().values()))

    entries = list(patcher._deltas._entries.items())
    downs = [(k[0], v[0][0]) for k, v in entries if k[1] == "down"]
    slices = [(k[0], v[0]) for k, v in entries if k[1] == "factors" and "rows_of" in k[0].extra]
    assert downs and len(slices) >= 3 * len(downs)  # q, k, v (and the MLP rows of linear1) per fused module
    assert all(tensors[1] is None for _, tensors in slices)  # their down is the shared one
    rows = {id(parent): down for parent, down in downs}
    assert {id(m.extra["parent"]) for m, _ in slices} == set(rows)
    assert first.factors_built == len([k for k, _ in entries if k[1] == "factors"])

    assert patcher.sync([(peft, 1.0, 1.0)]).factors_built == len(other.factors)
    back = patcher.sync([(kohya, 0.7, 0.7)])
    assert back.factors_built == 0 and back.written > 0
    assert all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), fresh.state_dict().values()))
    assert uncached.sync([(peft, 1.0, 1.0)]).factors_built == len(other.factors)  # nothing kept: made again
