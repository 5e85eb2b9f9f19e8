"""The one NaN/Inf test (`loraprompt.adapters.finite`) against torch's elementwise isfinite."""

from __future__ import annotations

import math

import pytest
import torch

from loraprompt.adapters.finite import all_finite, finite_flag

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 517, -1])
def test_one_bad_element_anywhere_is_found(dtype: torch.dtype, bad: float, where: int) -> None:
    t = (torch.randn(37, 29) * 3).to(dtype)
    assert all_finite(t) and bool(torch.isfinite(t.float()).all())
    t.view(-1)[where] = bad
    expected = bool(torch.isfinite(t.float()).all())
    assert all_finite(t) is expected
    # float8_e4m3fn has no Inf encoding (torch saturates it to 448), so only its NaN is a bad value
    assert expected is (dtype == torch.float8_e4m3fn and math.isinf(bad))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extremes_and_empty_tensors_are_finite(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    t = torch.tensor([big, -big, 0.0, -0.0], dtype=torch.float64).to(dtype)
    assert all_finite(t)
    assert all_finite(torch.empty(0, 4, dtype=dtype)) and all_finite(torch.zeros((), dtype=dtype))
    flag = finite_flag(t)
    assert flag.dtype == torch.bool and flag.dim() == 0  # a tensor, so callers batch the read-back
