"""Key schemes (kohya, LyCORIS, PEFT, diffusers, old attention processors) and family detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt.adapters import read_adapter
from loraprompt.adapters.keys import split_key
from loraprompt.keymaps import map_adapter
from tests.fixtures.loras import ToolLoraCache
from tests.keymaps.conftest import diffusers_keymaps

Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1"


@pytest.mark.parametrize(
    ("key", "component", "path", "part", "scheme"),
    [
        ("lora_unet_a_b.lora_down.weight", "unet", "a_b", "down", "kohya"),
        ("lora_te1_text_model_x.alpha", "text_encoder", "text_model_x", "alpha", "kohya"),
        ("lora_te2_text_model_x.hada_w1_a", "text_encoder_2", "text_model_x", "hada_w1_a", "kohya"),
        ("lora_te_x.oft_blocks", "text_encoder", "x", "blocks", "kohya"),
        ("unet.a.b.lora_A.weight", "unet", "a_b", "down", "diffusers"),
        ("text_encoder_2.text_model.x.lora_B.weight", "text_encoder_2", "text_model_x", "up", "diffusers"),
        ("unet.a.lora_B.bias", "unet", "a", "bias", "diffusers"),
        ("unet.a.lora_magnitude_vector", "unet", "a", "magnitude", "diffusers"),
        ("lora_unet_a_b.c.lora_magnitude_vector", "unet", "a_b_c", "magnitude", "kohya"),
        ("lora_unet_a_b.dora_scale", "unet", "a_b", "dora_scale", "kohya"),
        ("diffusion_model.input_blocks.4.1.proj_in.lora_up.weight", "unet", "input_blocks_4_1_proj_in", "up", "comfyui"),
        ("diffusion_model.out.2.alpha", "unet", "out_2", "alpha", "comfyui"),
        ("text_encoders.clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.hada_w1_a", "text_encoder_2", "text_model_encoder_layers_0_mlp_fc1", "hada_w1_a", "comfyui"),
        ("text_encoders.clip_l.transformer.text_model.x.lora_down.weight", "text_encoder", "text_model_x", "down", "comfyui"),
        ("base_model.model.down_blocks.0.x.lora_A.default.weight", "unet", "down_blocks_0_x", "down", "peft"),
        ("base_model.model.text_model.encoder.x.lora_B.weight", "text_encoder", "text_model_encoder_x", "up", "peft"),
        ("encoder.layers.0.mlp.fc1.lora_A.weight", "text_encoder", "encoder_layers_0_mlp_fc1", "down", "peft"),
        (f"{Q}.processor.to_out_lora.up.weight", "unet", f"{Q.replace('.', '_')}_to_out_0", "up", "diffusers-old"),
        (f"unet.{Q}.to_k.lora.down.weight", "unet", f"{Q.replace('.', '_')}_to_k", "down", "diffusers-old"),
        ("text_encoder.text_model.x.q_proj.lora_linear_layer.up.weight", "text_encoder", "text_model_x_q_proj", "up", "diffusers-old"),
    ],
)
def test_split_key(key: str, component: str, path: str, part: str, scheme: str) -> None:
    kp = split_key(key)
    assert kp is not None
    assert (kp.component, kp.path, kp.part, kp.scheme) == (component, path, part, scheme)


@pytest.mark.parametrize("key", ["lora_unet_x.unknown_part", "bundle_emb.x.string_to_param.*", "model.diffusion_model.out.2.weight", "unet.lora_A.weight"])
def test_keys_no_scheme_claims(key: str) -> None:
    assert split_key(key) is None


def _pair(prefix: str, down: tuple[int, ...], up: tuple[int, ...], down_part: str = "lora_down.weight", up_part: str = "lora_up.weight") -> dict[str, torch.Tensor]:
    return {f"{prefix}.{down_part}": torch.randn(down), f"{prefix}.{up_part}": torch.randn(up)}


def test_old_processor_and_sgm_kohya_files_map_onto_diffusers_models(tmp_path: Path) -> None:
    old = {}
    for proj in ("to_q", "to_k", "to_v", "to_out"):
        old.update(_pair(f"{Q}.processor.{proj}_lora", (2, 16), (16, 2), "down.weight", "up.weight"))
    save_file(old, str(tmp_path / "old.safetensors"))
    adapter = read_adapter(tmp_path / "old.safetensors")
    assert adapter.format == "diffusers-old" and len(adapter.modules) == 4
    assert map_adapter(adapter, diffusers_keymaps("sd1")).unmapped == ()

    sgm = _pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", (2, 40), (16, 2))
    sgm.update(_pair("lora_unet_output_blocks_2_2_conv", (2, 16, 3, 3), (16, 2, 1, 1)))
    sgm.update(_pair("lora_te1_text_model_encoder_layers_1_self_attn_v_proj", (2, 16), (16, 2)))
    save_file(sgm, str(tmp_path / "sgm.safetensors"))
    adapter = read_adapter(tmp_path / "sgm.safetensors")
    assert adapter.family == "sdxl"
    mapped = map_adapter(adapter, diffusers_keymaps("sdxl")).mapped
    assert mapped["unet/output_blocks_2_2_conv"][1].module == "up_blocks.0.upsamplers.0.conv"
    assert mapped["text_encoder/text_model_encoder_layers_1_self_attn_v_proj"][1].module == "encoder.layers.1.self_attn.v_proj"


@pytest.mark.parametrize(
    ("metadata", "family"),
    [
        ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
        ({"ss_base_model_version": "sd_v1"}, "sd1"),
        ({"ss_v2": "True"}, "sd2"),
        ({"modelspec.architecture": "stable-diffusion-v2-768-v/lora"}, "sd2"),
        ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "sdxl"),
        ({}, None),
    ],
)
def test_family_from_metadata(tmp_path: Path, metadata: dict[str, str], family: str | None) -> None:
    save_file(_pair("lora_unet_mid_block_attentions_0_proj_in", (2, 16), (16, 2)), str(tmp_path / "m.safetensors"), metadata=metadata)
    assert read_adapter(tmp_path / "m.safetensors").family == family


@pytest.mark.parametrize(("width", "family"), [(768, "sd1"), (1024, "sd2"), (2048, "sdxl")])
def test_family_from_context_width(tmp_path: Path, width: int, family: str) -> None:
    save_file(_pair("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k", (2, width), (16, 2)), str(tmp_path / "w.safetensors"))
    assert read_adapter(tmp_path / "w.safetensors").family == family


def test_peft_alpha_from_header_and_pattern(tmp_path: Path) -> None:
    import json

    tensors = _pair(f"unet.{Q}.to_q", (4, 16), (16, 4), "lora_A.weight", "lora_B.weight")
    tensors.update(_pair(f"unet.{Q}.to_k", (4, 16), (16, 4), "lora_A.weight", "lora_B.weight"))
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {"attn1.to_k": 2}})}
    save_file(tensors, str(tmp_path / "p.safetensors"), metadata=meta)
    mods = read_adapter(tmp_path / "p.safetensors").modules
    assert mods[f"unet/{Q.replace('.', '_')}_to_q"].scale == 2.0
    assert mods[f"unet/{Q.replace('.', '_')}_to_k"].scale == 0.5
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    assert read_adapter(tmp_path / "plain.safetensors").modules[f"unet/{Q.replace('.', '_')}_to_q"].scale == 1.0


@pytest.mark.parametrize(("pattern", "hits_q"), [("q", False), ("to_q", True), ("attn1.to_q", True), ("attn1_to_q", False), ("to_.", True)])
def test_peft_alpha_pattern_matches_dotted_name_like_peft(tmp_path: Path, pattern: str, hits_q: bool) -> None:
    import json

    from peft.utils.other import get_pattern_key

    tensors = _pair(f"unet.{Q}.to_q", (4, 16), (16, 4), "lora_A.weight", "lora_B.weight")
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.r": 4, "unet.alpha_pattern": {pattern: 2}})}
    save_file(tensors, str(tmp_path / "p.safetensors"), metadata=meta)
    scale = read_adapter(tmp_path / "p.safetensors").modules[f"unet/{Q.replace('.', '_')}_to_q"].scale
    assert hits_q == (get_pattern_key([pattern], f"{Q}.to_q") == pattern)  # PEFT's own rule agrees
    assert scale == (0.5 if hits_q else 2.0)


@pytest.mark.parametrize("bias_key", ["lora_up.bias", "lora_B.bias"])
def test_a1111_mode_ignores_the_lora_up_bias_and_reference_applies_it(tmp_path: Path, bias_key: str) -> None:
    kohya = bias_key.startswith("lora_up")
    prefix = "lora_unet_mid_block_attentions_0_proj_in" if kohya else "unet.mid_block.attentions.0.proj_in"
    tensors = _pair(prefix, (2, 16), (8, 2), *(() if kohya else ("lora_A.weight", "lora_B.weight")))
    tensors[f"{prefix}.{bias_key}"] = torch.randn(8)
    save_file(tensors, str(tmp_path / "b.safetensors"))
    weight, bias = torch.randn(8, 16), torch.randn(8)
    ref = next(iter(read_adapter(tmp_path / "b.safetensors").modules.values())).delta(weight, 0.5, bias)
    a1111 = next(iter(read_adapter(tmp_path / "b.safetensors", mode="a1111").modules.values())).delta(weight, 0.5, bias)
    assert ref[1] is not None and torch.allclose(ref[1], tensors[f"{prefix}.{bias_key}"] * 0.5)
    assert a1111[1] is None or not bool(a1111[1].any())
    assert ref[0] is not None and a1111[0] is not None and torch.allclose(ref[0], a1111[0])


def test_a_module_named_twice_in_two_namings_is_refused_not_applied_twice(tool_loras: ToolLoraCache, tmp_path: Path) -> None:
    """A real kohya SDXL file (diffusers block names) with one module's tensors added again under
    its SGM name, as a merge of two files of different namings holds them."""
    from safetensors.torch import load_file

    from loraprompt import Patcher
    from loraprompt.errors import PatchError

    tool = tool_loras.get("kohya", "sdxl")
    tensors = load_file(str(tool.path))
    diffusers_name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    sgm_name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    tensors.update({k.replace(diffusers_name, sgm_name): v for k, v in tensors.items() if k.startswith(diffusers_name + ".")})
    save_file({k: v.clone() for k, v in tensors.items()}, str(tmp_path / "twice.safetensors"))
    models = tool.base()
    before = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in models.items()}
    with pytest.raises(PatchError, match="twice") as info:
        Patcher(models).sync([(read_adapter(tmp_path / "twice.safetensors"), 1.0, 1.0)])
    assert diffusers_name.removeprefix("lora_unet_") in str(info.value) and sgm_name.removeprefix("lora_unet_") in str(info.value)
    assert all(torch.equal(v, before[c][k]) for c, m in models.items() for k, v in m.state_dict().items())
