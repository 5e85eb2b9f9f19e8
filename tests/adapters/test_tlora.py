"""T-LoRA files (lycoris-lora 4.x `algo="tlora"`), saved by LyCORIS' wrapper: the reference is the
output of LyCORIS' own modules after it loads the file back (`create_lycoris_from_weights`, which
rebuilds the subtracted base from the SVD of the original weights), with no timestep mask set."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from loraprompt import Patcher, read_adapter
from loraprompt.errors import LoraPromptError
from tests.fixtures.loras import _randomize
from tests.fixtures.models import tiny_sd1

STRENGTH = 0.7


def _write(path: Path, targets: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A T-LoRA over the tiny SD1 UNet's `targets` (module classes), random factors, saved by LyCORIS."""
    import lycoris.modules.tlora
    from lycoris import LycorisNetwork, create_lycoris

    # its __init__ runs a full gc.collect() per module: 0.6 s each in this test process, no effect on the values
    monkeypatch.setattr(lycoris.modules.tlora, "gc", SimpleNamespace(collect=lambda: 0))
    saved = {k: getattr(LycorisNetwork, k) for k in ("TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME")}
    LycorisNetwork.apply_preset({"target_module": targets, "target_name": []})
    try:
        net = create_lycoris(tiny_sd1()["unet"], 1.0, linear_dim=4, linear_alpha=2.0, algo="tlora")
    finally:  # the preset lives on the class: leave it as found
        for k, v in saved.items():
            setattr(LycorisNetwork, k, v)
    net.apply_to()
    _randomize([p for p in net.parameters() if p.requires_grad], 3, torch.float32)
    net.save_weights(str(path), torch.float32, None)


def test_tlora_file_patches_as_lycoris_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """T-LoRA files were refused as "no LoRA/LyCORIS module found". Patched at a strength, every
    adapted Linear and 1×1 conv now gives what LyCORIS' own module, loaded from the file, outputs."""
    from lycoris import create_lycoris_from_weights

    path = tmp_path / "tlora.safetensors"
    _write(path, ["Transformer2DModel"], monkeypatch)
    adapter = read_adapter(path)
    assert adapter.algorithms() == {"tlora"} and adapter.format == "lycoris"
    reference = tiny_sd1()["unet"]
    net, _ = create_lycoris_from_weights(STRENGTH, str(path), reference)
    assert len(net.loras) == len(adapter.modules) >= 20
    patched = tiny_sd1()["unet"]
    Patcher({"unet": patched}).sync([(adapter, STRENGTH, STRENGTH)])
    modules = dict(patched.named_modules())
    names = {id(m): n for n, m in reference.named_modules()}
    gen = torch.Generator().manual_seed(0)
    kinds = set()
    with torch.no_grad():
        for lora in net.loras:
            org = lora.org_module[0]
            kinds.add(type(org))
            x = torch.randn((3, org.in_features) if isinstance(org, nn.Linear) else (2, org.in_channels, 4, 4), generator=gen)
            expected, before = lora(x), org(x)
            assert (expected - before).abs().max() > 1e-3  # the module changes the output
            torch.testing.assert_close(modules[names[id(org)]](x), expected, rtol=1e-4, atol=1e-5)
    assert kinds == {nn.Linear, nn.Conv2d}


def test_tlora_on_a_3x3_conv_is_refused_naming_the_algorithm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LyCORIS saves 1×1 T-LoRA factors for a 3×3 conv, whose merge and forward fail in LyCORIS
    itself: such a module does not fit, and the patcher refuses it naming the file and the algorithm,
    writing nothing to the model."""
    path = tmp_path / "tlora-conv.safetensors"
    _write(path, ["ResnetBlock2D"], monkeypatch)
    adapter = read_adapter(path)
    module = next(m for m in adapter.modules.values() if m.path.endswith("resnets_0_conv1"))
    weight = dict(tiny_sd1()["unet"].named_parameters())["down_blocks.0.resnets.0.conv1.weight"]
    assert not module.fits(tuple(weight.shape))
    unet = tiny_sd1()["unet"]
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(LoraPromptError, match=r"T-LoRA \(tlora\) module has no delta for a \(3, 3\) kernel") as info:
        Patcher({"unet": unet}).sync([(adapter, 1.0, 1.0)])
    assert str(path) in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
