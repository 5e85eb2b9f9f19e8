"""DiT models as users load them: a T5 text encoder under either component name (kohya's
`lora_te3_` on SD3's text_encoder_3 and on Flux.1's text_encoder_2), and models still wrapped by
PEFT. References: PEFT's own merge (`merge_and_unload`) and diffusers' fuse of the files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from loraprompt import Patcher, read_adapter
from tests.fixtures import dit

T5_TARGETS = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]


def tiny_t5(seed: int = 0) -> nn.Module:
    """A T5 v1.1-style encoder (gated GELU, as SD3's and Flux's) from config, random weights."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, feed_forward_proj="gated-gelu")
    return T5EncoderModel(config).eval()


def t5_kohya_lora(path: Path, rank: int = 2, alpha: float = 3.0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """kohya `lora_te3_…` tensors for a PEFT LoRA on the tiny T5 (key names by diffusers'
    `convert_state_dict_to_kohya`, whose `lora_te1_` becomes sd-scripts' `lora_te3_` for T5), and
    the T5 weights PEFT's `merge_and_unload` gives."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = tiny_t5()
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=T5_TARGETS, init_lora_weights=False), model)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    state = get_peft_model_state_dict(model)
    kohya = convert_state_dict_to_kohya({f"text_encoder.{k}": v for k, v in state.items()})
    tensors = {k.replace("lora_te1_", "lora_te3_", 1): (torch.tensor(alpha) if k.endswith(".alpha") else v) for k, v in kohya.items()}
    assert all(k.startswith("lora_te3_encoder_block_") for k in tensors)
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()  # PEFT's own merge, as merge_and_unload runs it
    reference = {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}
    return tensors, reference


@pytest.mark.parametrize(("family", "t5_component"), [("sd3", "text_encoder_3"), ("flux", "text_encoder_2")])
def test_kohya_te3_reaches_the_t5_under_either_component_name(tmp_path: Path, family: str, t5_component: str) -> None:
    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    t5_tensors, t5_ref = t5_kohya_lora(tmp_path)
    transformer = dit.native_file(lora, tmp_path / "kohya.safetensors", "kohya")
    from safetensors.torch import load_file

    path = tmp_path / "both.safetensors"
    save_file({**load_file(str(transformer)), **t5_tensors}, str(path))
    adapter = read_adapter(path)
    assert adapter.components() == {"transformer", "text_encoder_3"}
    model, t5 = dit.tiny_transformer(family), tiny_t5()
    base_t5 = {k: v.clone() for k, v in t5.state_dict().items()}
    patcher = Patcher({"transformer": model, t5_component: t5})
    report = patcher.sync([(adapter, 1.0, 1.0)])
    assert report.diagnostics == []
    ours = t5.state_dict()
    assert ours.keys() == t5_ref.keys()
    for key, value in t5_ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)
    changed = {k for k in base_t5 if not torch.equal(ours[k], base_t5[k])}
    assert len(changed) == 2 * len(T5_TARGETS)  # every adapted T5 weight, nothing else
    ref = dit.peft_fused(lora)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=1e-6, msg=key)
    patcher.restore()
    assert all(torch.equal(v, base_t5[k]) for k, v in t5.state_dict().items())


NATIVE_MODEL_CASES = [("flux", "peft"), ("flux", "kohya"), ("flux", "comfyui"), ("flux", "bfl"), ("flux", "xlabs"),
                      ("flux", "onetrainer"), ("sd3", "peft"), ("sd3", "kohya"), ("sd3", "comfyui"), ("sd3", "bfl"),
                      ("flux2", "peft"), ("flux2", "kohya"), ("flux2", "bfl")]


def _layout_file(lora: dit.PeftLora, tmp_path: Path, layout: str) -> Path:
    if layout == "peft":
        return lora.path
    if layout == "onetrainer":  # `lora_transformer_<diffusers name>`: OneTrainer's, read by ComfyUI
        from loraprompt.tools import convert_lora

        return convert_lora(lora.path, tmp_path / "ot.safetensors", "kohya").output
    return dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout)


@pytest.mark.parametrize(("family", "layout"), NATIVE_MODEL_CASES)
def test_every_layout_maps_onto_a_model_loaded_under_native_names(tmp_path: Path, family: str, layout: str) -> None:
    """ComfyUI/Forge hold Flux as `double_blocks.N.img_attn.qkv` (q/k/v stacked) and
    `single_blocks.N.linear1` (q/k/v+MLP): a diffusers-named LoRA's to_q is rows of those."""
    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    path = _layout_file(lora, tmp_path, layout)
    native, to_diffusers = dit.native_model(family)
    before = {k: v.clone() for k, v in native.state_dict().items()}
    patcher = Patcher({"transformer": native})
    report = patcher.sync([(read_adapter(path), 0.7, 0.7)])
    assert report.diagnostics == []
    reference = dit.tiny_transformer(family)  # the same file on the diffusers model (checked against diffusers' fuse)
    Patcher({"transformer": reference}).sync([(read_adapter(path), 0.7, 0.7)])
    expected = reference.state_dict()
    ours = to_diffusers(native.state_dict())
    assert ours and all(torch.allclose(v, expected[k], rtol=0, atol=1e-6) for k, v in ours.items())
    changed = sum(not torch.equal(v, before[k]) for k, v in native.state_dict().items())
    assert changed >= (4 if layout == "xlabs" else 10)
    patcher.restore()
    assert all(torch.equal(v, before[k]) for k, v in native.state_dict().items())


def test_a_flux_lora_on_a_natively_named_sd3_model_is_refused_by_name(tmp_path: Path) -> None:
    from loraprompt.errors import FamilyMismatchError

    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    native, _ = dit.native_model("sd3")
    before = {k: v.clone() for k, v in native.state_dict().items()}
    with pytest.raises(FamilyMismatchError, match=r"is a Flux\.1 adapter; the loaded model is SD3"):
        Patcher({"transformer": native}).sync([(read_adapter(lora.path), 1.0, 1.0)])
    assert all(torch.equal(v, before[k]) for k, v in native.state_dict().items())


def test_a_comfyui_style_wrapper_prefix_is_found(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    native, to_diffusers = dit.native_model("flux")
    wrapper = nn.Module()
    wrapper.add_module("diffusion_model", native)
    Patcher({"transformer": wrapper}).sync([(read_adapter(lora.path), 1.0, 1.0)])
    ours, ref = to_diffusers(native.state_dict()), dit.peft_fused(lora)
    assert all(torch.allclose(v, ref[k], rtol=0, atol=1e-6) for k, v in ours.items())


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_model_still_wrapped_by_peft_maps_onto_its_base_layers(tmp_path: Path, family: str) -> None:
    """A transformer diffusers left PEFT-wrapped (load_lora_weights without unload): our file is
    applied to the `base_layer` weights, PEFT's own adapter weights are untouched, restore is exact."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    kohya = dit.native_file(lora, tmp_path / "kohya.safetensors", "kohya")
    model = dit.tiny_transformer(family)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q", "to_k", "proj_out"]), model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(".base_layer." in k for k in before)
    patcher = Patcher({"transformer": model})
    for path in (lora.path, kohya):
        report = patcher.sync([(read_adapter(path), 0.7, 0.7)])
        assert report.diagnostics == []
        ref = dit.peft_fused(lora, 0.7)
        state = model.state_dict()
        for key, value in state.items():
            if "lora_" in key:
                assert torch.equal(value, before[key]), key
            else:
                torch.testing.assert_close(value, ref[key.replace(".base_layer", "")], rtol=0, atol=1e-6, msg=key)
    patcher.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_peft_wrapped_sd1_unet_and_text_encoder_map_too(tmp_path: Path) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    from tests.fixtures.loras import write_kohya_lora

    lora = write_kohya_lora("sd1", tmp_path / "sd1.safetensors")
    models = lora.base()
    for name in ("unet", "text_encoder"):
        inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q", "to_k", "q_proj", "v_proj"]), models[name])
    before = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in models.items()}
    patcher = Patcher(models)
    assert patcher.sync([(read_adapter(lora.path), 1.0, 1.0)]).diagnostics == []
    for component in ("unet", "text_encoder"):
        state = models[component].state_dict()
        for key, value in state.items():
            if "lora_" in key:
                assert torch.equal(value, before[component][key]), key
            else:
                torch.testing.assert_close(value, lora.merged[component][key.replace(".base_layer", "")], rtol=0, atol=1e-5, msg=key)
    patcher.restore()
    assert all(torch.equal(v, before[c][k]) for c, m in models.items() for k, v in m.state_dict().items())
