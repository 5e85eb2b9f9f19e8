"""Files saved by LyCORIS' own wrapper (`lycoris.create_lycoris(model, …).save_weights`), as
SimpleTuner saves its Flux/SD3/SDXL LyCORIS: keys `lycoris_<the wrapped model's module name>.<part>`.
The reference is LyCORIS' own merge of each module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from loraprompt import Patcher, read_adapter
from tests.fixtures import dit
from tests.fixtures.loras import _lycoris_weight, _randomize
from tests.fixtures.models import tiny_sd1

STRENGTH = 0.8


def _wrapped(model: nn.Module, path: Path, algo: str, targets: list[str]) -> dict[str, torch.Tensor]:
    """`model` wrapped by create_lycoris (random factors), saved to `path`; LyCORIS' merged state dict."""
    from lycoris import LycorisNetwork, create_lycoris

    saved = {k: getattr(LycorisNetwork, k) for k in ("TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME")}
    LycorisNetwork.apply_preset({"target_module": targets, "target_name": []})
    try:
        net = create_lycoris(model, STRENGTH, linear_dim=4, linear_alpha=2.0, algo=algo, factor=4)
    finally:  # the preset lives on the class: leave it as found
        for k, v in saved.items():
            setattr(LycorisNetwork, k, v)
    net.apply_to()
    _randomize([p for p in net.parameters() if p.requires_grad], 1, torch.float32)
    net.save_weights(str(path), torch.float32, None)
    names = {id(m): n for n, m in model.named_modules()}
    merged = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for lora in net.loras:
            key = f"{names[id(lora.org_module[0])]}.weight"
            merged[key] = _lycoris_weight(lora, STRENGTH)[0].reshape(merged[key].shape).clone()
    return merged


def _assert_patch_equals(model: nn.Module, component: str, path: Path, merged: dict[str, torch.Tensor]) -> None:
    base = {k: v.clone() for k, v in model.state_dict().items()}
    patcher = Patcher({component: model})
    patcher.sync([(read_adapter(path), STRENGTH, STRENGTH)])
    got = model.state_dict()
    assert sum(not torch.equal(merged[k], base[k]) for k in base) >= 10
    for key, expected in merged.items():
        torch.testing.assert_close(got[key], expected, rtol=2e-5, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")
    patcher.restore()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("algo", ["lokr", "loha", "locon"])
def test_lycoris_wrapper_file_on_flux(tmp_path: Path, algo: str) -> None:
    path = tmp_path / f"{algo}.safetensors"
    merged = _wrapped(dit.tiny_transformer("flux"), path, algo, ["FluxAttention", "FeedForward"])
    adapter = read_adapter(path)
    assert adapter.family == "flux" and adapter.components() == {"transformer"}
    _assert_patch_equals(dit.tiny_transformer("flux"), "transformer", path, merged)


def test_lycoris_wrapper_file_on_a_unet(tmp_path: Path) -> None:
    path = tmp_path / "lokr.safetensors"
    merged = _wrapped(tiny_sd1()["unet"], path, "lokr", ["Transformer2DModel", "ResnetBlock2D"])
    _assert_patch_equals(tiny_sd1()["unet"], "unet", path, merged)


@pytest.mark.parametrize("algo", ["locon", "lora"])
def test_lycoris_wrapper_locon_reports_its_format_as_lycoris(tmp_path: Path, algo: str) -> None:
    """A plain LoCon saved by LyCORIS' wrapper (no metadata, only LoRA parts) was summarised as
    "kohya"; its `lycoris_` key prefix, which only that wrapper writes, says LyCORIS."""
    from loraprompt.adapters.summary import summarize

    path = tmp_path / f"{algo}.safetensors"
    _wrapped(tiny_sd1()["unet"], path, algo, ["Transformer2DModel"])
    info = summarize(read_adapter(path))
    assert (info["format"], info["algorithms"]) == ("lycoris", ["lora"])
