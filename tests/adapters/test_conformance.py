"""Conformance matrix: every algorithm x {Linear, Conv 1x1, Conv 3x3} x file dtype.

Each case builds the tensors an adapter file holds for a layer of that shape and checks the shared
contract of `AdapterModule.delta`: float32 output in the weight's exact shape, zero strength = no
change, linearity in strength where `linear` says so, and the closed forms (LoRA = up @ down,
LoHa = Hadamard, LoKr = Kronecker, full = diff, IA3 = row scaling).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from loraprompt.adapters.algorithms import (
    BOFTModule,
    FullModule,
    GLoRAModule,
    IA3Module,
    LoHaModule,
    LoKrModule,
    LoraModule,
    NormModule,
    OFTModule,
)
from loraprompt.adapters.types import AdapterModule

SHAPES = {"linear": (8, 6), "conv1x1": (8, 6, 1, 1), "conv3x3": (8, 6, 3, 3)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
R = 2


def _rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _kernel(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[2:])


def lora(shape: tuple[int, ...]) -> dict[str, Tensor]:
    out, inp, k = shape[0], shape[1], _kernel(shape)
    return {"up": _rand(out, R, *[1] * len(k), seed=1), "down": _rand(R, inp, *k, seed=2)}


def locon_tucker(shape: tuple[int, ...]) -> dict[str, Tensor]:
    out, inp, k = shape[0], shape[1], _kernel(shape)
    return {"up": _rand(out, R, *[1] * len(k), seed=1), "down": _rand(R, inp, *[1] * len(k), seed=2), "mid": _rand(R, R, *k, seed=3)}


def loha(shape: tuple[int, ...]) -> dict[str, Tensor]:
    out, rest = shape[0], int(torch.tensor(shape[1:]).prod())
    return {"hada_w1_a": _rand(out, R, seed=1), "hada_w1_b": _rand(R, rest, seed=2), "hada_w2_a": _rand(out, R, seed=3), "hada_w2_b": _rand(R, rest, seed=4)}


def lokr_full(shape: tuple[int, ...]) -> dict[str, Tensor]:
    return {"lokr_w1": _rand(2, 2, seed=1), "lokr_w2": _rand(shape[0] // 2, shape[1] // 2, *_kernel(shape), seed=2)}


def lokr_lowrank(shape: tuple[int, ...]) -> dict[str, Tensor]:
    k = _kernel(shape)
    return {"lokr_w1": _rand(2, 2, seed=1), "lokr_w2_a": _rand(shape[0] // 2, R, seed=2), "lokr_w2_b": _rand(R, shape[1] // 2, *k, seed=3)}


def ia3(shape: tuple[int, ...]) -> dict[str, Tensor]:
    return {"weight": _rand(shape[0], seed=1)}


def full(shape: tuple[int, ...]) -> dict[str, Tensor]:
    return {"diff": _rand(*shape, seed=1), "diff_b": _rand(shape[0], seed=2)}


def glora(shape: tuple[int, ...]) -> dict[str, Tensor]:
    out, inp, k = shape[0], shape[1], _kernel(shape)
    return {"a1": _rand(inp, R, seed=1), "a2": _rand(R, inp, seed=2), "b1": _rand(out, R, seed=3), "b2": _rand(R, inp, *k, seed=4)}


def oft(shape: tuple[int, ...]) -> dict[str, Tensor]:
    return {"blocks": _rand(2, shape[0] // 2, shape[0] // 2, seed=1) * 0.1}


def boft(shape: tuple[int, ...]) -> dict[str, Tensor]:
    return {"blocks": _rand(2, shape[0] // 2, 2, 2, seed=1) * 0.1}


CASES: dict[str, tuple[type[AdapterModule], Callable[[tuple[int, ...]], dict[str, Tensor]], float | None]] = {
    "lora": (LoraModule, lora, 4.0),
    "locon-tucker": (LoraModule, locon_tucker, 1.0),
    "loha": (LoHaModule, loha, 1.0),
    "lokr-full": (LoKrModule, lokr_full, 3.0),
    "lokr-lowrank": (LoKrModule, lokr_lowrank, 1.0),
    "ia3": (IA3Module, ia3, None),
    "full": (FullModule, full, None),
    "glora": (GLoRAModule, glora, 1.0),
    "oft": (OFTModule, oft, None),
    "boft": (BOFTModule, boft, None),
}


def _module(case: str, shape: tuple[int, ...], dtype: torch.dtype) -> AdapterModule:
    cls, make, alpha = CASES[case]
    tensors = {k: v.to(dtype) for k, v in make(shape).items()}
    return cls("unet", "x", cls.name, tensors, alpha=alpha)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_delta_contract(case: str, layer: str, dtype: str) -> None:
    shape = SHAPES[layer]
    weight = _rand(*shape, seed=9)
    bias = _rand(shape[0], seed=10)
    mod = _module(case, shape, DTYPES[dtype])
    assert mod.fits(shape)
    assert not mod.fits((shape[0] * 2, *shape[1:]))
    dw1, db1 = mod.delta(weight, 1.0, bias)
    assert dw1 is not None and dw1.shape == weight.shape and dw1.dtype == torch.float32
    assert db1 is None or (db1.shape == bias.shape and db1.dtype == torch.float32)
    assert dw1.abs().max() > 0
    dw0, db0 = mod.delta(weight, 0.0, bias)
    assert dw0 is not None and torch.allclose(dw0, torch.zeros_like(dw0), atol=1e-6)
    if db0 is not None:
        assert torch.count_nonzero(db0) == 0
    dwh, _ = mod.delta(weight, 0.5, bias)
    assert dwh is not None
    if mod.linear:
        torch.testing.assert_close(dwh, 0.5 * dw1, rtol=TOL["float32"], atol=TOL["float32"])
    else:
        assert not torch.allclose(dwh, 0.5 * dw1)
    dw2, _ = mod.delta(weight, -1.0, bias)
    if mod.linear:
        torch.testing.assert_close(dw2, -dw1, rtol=TOL["float32"], atol=TOL["float32"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", SHAPES)
def test_closed_forms(layer: str, dtype: str) -> None:
    shape = SHAPES[layer]
    weight = _rand(*shape, seed=9)
    tol = TOL[dtype] * 10

    mod = _module("lora", shape, DTYPES[dtype])
    up, down = mod.tensors["up"].float(), mod.tensors["down"].float()
    expected = (up.flatten(1) @ down.flatten(1)).reshape(shape) * (4.0 / R)
    torch.testing.assert_close(mod.delta(weight, 1.0)[0], expected, rtol=tol, atol=tol)

    mod = _module("loha", shape, DTYPES[dtype])
    t = {k: v.float() for k, v in mod.tensors.items()}
    expected = ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(shape) * (1.0 / R)
    torch.testing.assert_close(mod.delta(weight, 1.0)[0], expected, rtol=tol, atol=tol)

    mod = _module("lokr-full", shape, DTYPES[dtype])
    t = {k: v.float() for k, v in mod.tensors.items()}
    w1 = t["lokr_w1"].reshape(2, 2, *[1] * (len(shape) - 2))
    torch.testing.assert_close(mod.delta(weight, 1.0)[0], torch.kron(w1, t["lokr_w2"]), rtol=tol, atol=tol)

    mod = _module("ia3", shape, DTYPES[dtype])
    scale = mod.tensors["weight"].float().reshape(-1, *[1] * (len(shape) - 1))
    torch.testing.assert_close(mod.delta(weight, 1.0)[0], weight * scale, rtol=tol, atol=tol)

    mod = _module("full", shape, DTYPES[dtype])
    bias = torch.zeros(shape[0])
    dw, db = mod.delta(weight, 0.5, bias)
    torch.testing.assert_close(dw, 0.5 * mod.tensors["diff"].float())
    torch.testing.assert_close(db, 0.5 * mod.tensors["diff_b"].float())


def test_dyn_uses_leading_ranks_and_keeps_full_rank_scale() -> None:
    shape = SHAPES["linear"]
    weight = _rand(*shape, seed=9)
    mod = _module("lora", shape, torch.float32)
    mod.dyn = 1
    up, down = mod.tensors["up"], mod.tensors["down"]
    torch.testing.assert_close(mod.delta(weight, 1.0)[0], up[:, :1] @ down[:1] * (4.0 / R))


def test_norm_delta_is_the_stored_tensors() -> None:
    mod = NormModule("unet", "norm", "norm", {"w_norm": _rand(8, seed=1), "b_norm": _rand(8, seed=2)})
    dw, db = mod.delta(torch.ones(8), 2.0, torch.zeros(8))
    torch.testing.assert_close(dw, 2 * mod.tensors["w_norm"])
    torch.testing.assert_close(db, 2 * mod.tensors["b_norm"])


def test_shape_mismatch_names_both_shapes() -> None:
    mod = _module("lora", SHAPES["linear"], torch.float32)
    with pytest.raises(ValueError, match=r"unet/x.*\(8, 6\).*\(8, 5\)"):
        mod.delta(torch.zeros(8, 5), 1.0)


def test_a1111_dora_scales_the_whole_decomposition_by_strength() -> None:
    """A1111: ΔW = m·(V·d/‖V‖ − W), norm per input column; the reference interpolates the factor."""
    shape = SHAPES["linear"]
    weight = _rand(*shape, seed=9)
    tensors = lora(shape)
    dora = _rand(1, shape[1], seed=5).abs() + 1
    ref = LoraModule("unet", "x", "lora", tensors, alpha=2.0, dora_scale=dora)
    a1111 = LoraModule("unet", "x", "lora", tensors, alpha=2.0, dora_scale=dora, mode="a1111")
    v = weight + tensors["up"] @ tensors["down"]
    norm = v.norm(dim=0, keepdim=True)
    torch.testing.assert_close(a1111.delta(weight, 0.5)[0], 0.5 * (v * dora / norm - weight))
    full_ref, full_a1111 = ref.delta(weight, 1.0)[0], a1111.delta(weight, 1.0)[0]
    torch.testing.assert_close(full_ref, full_a1111, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref.delta(weight, 0.5)[0], a1111.delta(weight, 0.5)[0])
    assert not ref.linear and not a1111.linear


def test_a1111_ignores_glora_alpha() -> None:
    shape = SHAPES["linear"]
    weight = _rand(*shape, seed=9)
    ref = GLoRAModule("unet", "x", "glora", glora(shape), alpha=1.0)
    a1111 = GLoRAModule("unet", "x", "glora", glora(shape), alpha=1.0, mode="a1111")
    torch.testing.assert_close(a1111.delta(weight, 1.0)[0], ref.delta(weight, 1.0)[0] * R)


def test_a1111_boft_is_linear_and_agrees_at_full_strength() -> None:
    shape = SHAPES["conv3x3"]
    weight = _rand(*shape, seed=9)
    ref = BOFTModule("unet", "x", "boft", boft(shape))
    a1111 = BOFTModule("unet", "x", "boft", boft(shape), mode="a1111")
    assert a1111.linear and not ref.linear
    torch.testing.assert_close(a1111.delta(weight, 1.0)[0], ref.delta(weight, 1.0)[0])
    torch.testing.assert_close(a1111.delta(weight, 0.3)[0], 0.3 * ref.delta(weight, 1.0)[0])


def test_lokr_rank_order_differs_between_lycoris_and_a1111() -> None:
    tensors = {"lokr_w1_a": _rand(2, 2, seed=1), "lokr_w1_b": _rand(2, 2, seed=2), "lokr_w2_a": _rand(4, 3, seed=3), "lokr_w2_b": _rand(3, 3, seed=4)}
    ref = LoKrModule("unet", "x", "lokr", tensors, alpha=6.0)
    a1111 = LoKrModule("unet", "x", "lokr", tensors, alpha=6.0, mode="a1111")
    assert (ref.scale, a1111.scale) == (3.0, 2.0)
    weight = torch.zeros(8, 6)
    torch.testing.assert_close(ref.delta(weight, 1.0)[0] * 2, a1111.delta(weight, 1.0)[0] * 3)
