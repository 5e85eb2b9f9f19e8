"""Files written by PEFT itself (`PeftModel.save_pretrained`): `adapter_model.safetensors` with
`base_model.model.…` keys and the LoraConfig in `adapter_config.json` beside it. The reference is
PEFT's own `merge_and_unload`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from loraprompt import Patcher, read_adapter
from tests.fixtures.loras import UNET_TARGETS, _randomize
from tests.fixtures.models import tiny_sd1


def _save_pretrained(folder: Path, **config: Any) -> dict[str, torch.Tensor]:
    """A PEFT LoRA on the tiny SD1 UNet saved by save_pretrained in `folder`; PEFT's merged weights."""
    from peft import LoraConfig, get_peft_model

    unet = tiny_sd1()["unet"]
    model = get_peft_model(unet, LoraConfig(target_modules=UNET_TARGETS, init_lora_weights=False, **config))
    _randomize([p for n, p in model.named_parameters() if "lora_" in n and "magnitude" not in n], 3, torch.float32)
    model.save_pretrained(str(folder))
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.mark.parametrize(
    "config",
    [{"r": 4, "lora_alpha": 16}, {"r": 4, "lora_alpha": 8, "use_rslora": True},
     {"r": 4, "lora_alpha": 8, "alpha_pattern": {"to_k": 2, "conv1": 12}, "rank_pattern": {"to_k": 2}},
     {"r": 4, "lora_alpha": 6, "use_dora": True}],
    ids=["alpha", "rslora", "patterns", "dora"],
)
def test_save_pretrained_folder_uses_adapter_config(tmp_path: Path, config: dict[str, Any]) -> None:
    merged = _save_pretrained(tmp_path, **config)
    unet = tiny_sd1()["unet"]
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    patcher = Patcher({"unet": unet})
    patcher.sync([(read_adapter(tmp_path / "adapter_model.safetensors"), 1.0, 1.0)])
    got = unet.state_dict()
    assert any(not torch.equal(got[k], base[k]) for k in base)
    for key, expected in merged.items():
        torch.testing.assert_close(got[key], expected, rtol=2e-5, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")
    patcher.restore()
    assert all(torch.equal(v, base[k]) for k, v in unet.state_dict().items())


@pytest.mark.parametrize(
    ("kind", "config"),
    [("loha", {"r": 4, "alpha": 8}), ("loha", {"r": 4, "alpha": 6, "use_effective_conv2d": True, "alpha_pattern": {"to_k": 2}}),
     ("lokr", {"r": 4, "alpha": 8}), ("lokr", {"r": 2, "alpha": 3, "decompose_both": True, "rank_pattern": {"conv1": 4}}),
     ("lokr", {"r": 4, "alpha": 8, "use_effective_conv2d": True})],
    ids=["loha", "loha-conv2d-pattern", "lokr", "lokr-both-pattern", "lokr-conv2d"],
)
def test_save_pretrained_loha_and_lokr(tmp_path: Path, kind: str, config: dict[str, Any]) -> None:
    from peft import LoHaConfig, LoKrConfig, get_peft_model

    unet = tiny_sd1()["unet"]
    cls = LoHaConfig if kind == "loha" else LoKrConfig
    model = get_peft_model(unet, cls(target_modules=UNET_TARGETS, init_weights=False, **config))
    _randomize([p for n, p in model.named_parameters() if f"{kind}_" in n or "hada_" in n], 3, torch.float32)
    model.save_pretrained(str(tmp_path))
    merged = {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
    adapter = read_adapter(tmp_path / "adapter_model.safetensors")
    assert adapter.algorithms() == {kind} and adapter.unclaimed == ()
    fresh = tiny_sd1()["unet"]
    base = {k: v.clone() for k, v in fresh.state_dict().items()}
    Patcher({"unet": fresh}).sync([(adapter, 1.0, 1.0)])
    got = fresh.state_dict()
    assert sum(not torch.equal(merged[k], base[k]) for k in base) >= 10
    for key, expected in merged.items():
        torch.testing.assert_close(got[key], expected, rtol=2e-5, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")


def test_an_edited_adapter_config_is_read_again_by_the_adapter_cache(tmp_path: Path) -> None:
    """adapter_config.json scales a save_pretrained folder's LoRA, but the adapter cache was keyed by
    the weights file alone: editing lora_alpha (a user fixing a wrong config) kept the old scale
    until the weights file changed or the process restarted."""
    import json

    from loraprompt.cache import AdapterCache

    _save_pretrained(tmp_path, r=4, lora_alpha=4)
    weights = tmp_path / "adapter_model.safetensors"
    cache = AdapterCache()
    first = cache.get(weights)
    assert {m.alpha for m in first.modules.values()} == {4.0}
    assert cache.get(weights) is first  # unchanged files: one read
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_alpha"] = 16
    config_path.write_text(json.dumps(config))
    again = cache.get(weights)
    assert again is not first and {m.alpha for m in again.modules.values()} == {16.0}
    assert len(cache) == 1  # the stale reading is dropped, not kept beside the new one
