"""What the patcher writes equals what the real tools compute when they merge the same file
(diffusers/PEFT fuse, LyCORIS merge), per family; and q/k/v LoRAs land in the right rows of a
fused OpenCLIP in_proj_weight."""

from __future__ import annotations

import pytest
import torch

from loraprompt import Patcher, read_adapter
from tests.fixtures.loras import write_diffusers_lora, write_kohya_lora, write_lycoris
from tests.fixtures.models import SD2_TEXT_WIDTH, tiny_openclip_text
from tests.patcher.helpers import assert_bit_equal, snapshot

CASES = [
    ("sd1", "kohya", {}),
    ("sd2", "kohya", {}),
    ("sdxl", "kohya", {}),
    ("sd1", "peft", {}),
    ("sdxl", "peft", {"use_dora": True}),
    ("sd1", "loha", {}),
    ("sd1", "lokr", {}),
    ("sd2", "locon", {}),
]


@pytest.mark.parametrize(("family", "tool", "kwargs"), CASES, ids=[f"{f}-{t}{'-dora' if k else ''}" for f, t, k in CASES])
def test_patcher_matches_the_tools_merge(tmp_path, family, tool, kwargs) -> None:
    path = tmp_path / f"{tool}.safetensors"
    strength = 0.7
    if tool == "kohya":
        made = write_kohya_lora(family, path, strength=strength)
    elif tool == "peft":
        made = write_diffusers_lora(family, path, strength=strength, **kwargs)
    else:
        made = write_lycoris(family, path, tool, strength=strength)
    model = made.base()
    original = snapshot(model)
    adapter = read_adapter(path)
    report = Patcher(model).sync([(adapter, strength, strength)])
    assert report.patched == len(adapter.modules) and not report.diagnostics
    changed = 0
    for component, state in made.merged.items():
        now = model[component].state_dict()
        for key, expected in state.items():
            torch.testing.assert_close(now[key], expected, rtol=1e-5, atol=1e-5, msg=f"{component}.{key}")
            changed += not torch.equal(expected, original[f"{component}:{key}"])
    assert changed > 0


def test_qkv_loras_land_in_the_rows_of_a_fused_openclip_projection(tmp_path) -> None:
    made = write_kohya_lora("sd2", tmp_path / "k.safetensors")
    adapter = read_adapter(made.path)
    # the fixture tower's MLP is wider than the tiny SD2 text encoder's: keep the attention LoRAs
    adapter.modules = {k: m for k, m in adapter.modules.items() if "self_attn" in k}
    clip = made.base()["text_encoder"].state_dict()
    merged = made.merged["text_encoder"]
    tower = tiny_openclip_text()
    model = {"text_encoder": tower}
    original = snapshot(model)
    patcher = Patcher(model)
    patcher.sync([(adapter, 1.0, 1.0)])
    fused = tower.transformer.resblocks[1].attn.in_proj_weight.detach()
    before = original["text_encoder:transformer.resblocks.1.attn.in_proj_weight"]
    w = SD2_TEXT_WIDTH
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        key = f"encoder.layers.1.self_attn.{name}.weight"
        expected = merged[key] - clip[key]
        torch.testing.assert_close(fused[i * w : (i + 1) * w] - before[i * w : (i + 1) * w], expected,
                                   rtol=1e-5, atol=1e-5)
    patcher.restore()
    assert_bit_equal(model, original)
