"""A sync inside an autocast region writes the same bits as outside it. Automatic1111 activates
networks (extra_networks.activate) and calls on_cfg_denoiser inside `devices.autocast()`; there,
the out-of-place matmuls that build LoHa, LoKr and DoRA deltas ran in the autocast dtype, so 293,
11 and 267 of the tiny model's weights came out different (rounded through bfloat16/fp16), and
different from `loraprompt merge`. CPU autocast in bfloat16 stands in for CUDA's fp16 one."""

from __future__ import annotations

import pytest
import torch

from loraprompt import Patcher
from tests.fixtures.models import tiny_sd1
from tests.patcher.helpers import assert_bit_equal, snapshot, tool_adapters


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
