"""Key maps: diffusers <-> LDM/SGM, transformers 4/5, OpenCLIP; golden files; the invariants."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_open_clip_checkpoint

from loraprompt.adapters import read_adapter
from loraprompt.keymaps import KeyMap, build_keymap, keymap_for_module, map_adapter
from loraprompt.keymaps import unet as unet_names
from tests.fixtures.loras import ToolLoraCache
from tests.fixtures.models import SD2_TEXT_WIDTH, tiny_openclip_text, tiny_sd1
from tests.keymaps.conftest import FAMILY_MODELS, a1111_keymaps, diffusers_keymaps

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "keymaps"
REGEN = os.environ.get("LORAPROMPT_REGEN_GOLDEN") == "1"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_unet_names_match_diffusers_ldm_converter(family: str) -> None:
    """Weights stored under our LDM names come back under the same diffusers names through
    diffusers' own LDM checkpoint converter."""
    unet = FAMILY_MODELS[family]()["unet"]
    up_attn = unet_names.up_levels_with_attention({n for n, _ in unet.named_modules()})
    state = unet.state_dict()
    ldm = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        ldm[f"model.diffusion_model.{unet_names.to_ldm(module, up_attn)}.{param}"] = value
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    for key in state:
        module = key.rpartition(".")[0]
        assert unet_names.to_diffusers(unet_names.to_ldm(module, up_attn) or "") == module


def test_openclip_slices_match_diffusers_converter() -> None:
    """Our q/k/v row slices of in_proj_weight are what diffusers' OpenCLIP converter splits off."""
    openclip = tiny_openclip_text(SD2_TEXT_WIDTH)
    checkpoint = {f"cond_stage_model.model.{k}": v for k, v in openclip.state_dict().items()}
    hf_model = FAMILY_MODELS["sd2"]()["text_encoder"]
    converted = convert_open_clip_checkpoint(hf_model, checkpoint)
    keymap = keymap_for_module("text_encoder", openclip)
    params = dict(openclip.named_parameters())
    checked = 0
    for key, expected in converted.items():
        if not key.endswith(".weight") or "embeddings.position" in key:
            continue
        target = keymap.lookup(key[: -len(".weight")].replace(".", "_"))
        assert target is not None, key
        weight = params[f"{target.module}.{target.param}"]
        got = weight if target.rows is None else weight[target.rows[0] : target.rows[1]]
        assert torch.equal(got, expected), key
        checked += 1
    assert checked >= 2 * 6


def _golden_text(keymap: KeyMap) -> str:
    lines = []
    for alias, t in sorted(keymap.targets.items()):
        rows = "" if t.rows is None else f"[{t.rows[0]}:{t.rows[1]}]"
        lines.append(f"{keymap.component}\t{alias}\t{t.module}.{t.param}{rows}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("naming", ["diffusers", "a1111"])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_golden_keymaps(family: str, naming: str) -> None:
    maps = diffusers_keymaps(family) if naming == "diffusers" else a1111_keymaps(family)
    text = "".join(_golden_text(maps[c]) for c in sorted(maps))
    path = GOLDEN / f"{family}-{naming}.txt"
    if REGEN:
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} changed; rerun with LORAPROMPT_REGEN_GOLDEN=1 and review the diff"
    for km in maps.values():
        assert km.ambiguous == ()


@pytest.mark.parametrize("naming", ["diffusers", "a1111"])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("writer", ["diffusers", "kohya"])
def test_every_fixture_key_maps_one_to_one_onto_existing_weights(tool_loras: ToolLoraCache, family: str, naming: str, writer: str) -> None:
    adapter = read_adapter(tool_loras.get(writer, family).path)
    maps = diffusers_keymaps(family) if naming == "diffusers" else a1111_keymaps(family)
    result = map_adapter(adapter, maps)
    assert result.unmapped == ()
    targets = list(result.mapped.values())
    assert len(set(targets)) == len(targets)
    for component, target in targets:
        assert target.module in maps[component].modules()
    if naming == "diffusers":
        models = FAMILY_MODELS[family]()
        for component, target in targets:
            param = getattr(models[component].get_submodule(target.module), target.param)
            delta, _ = adapter.modules[next(k for k, v in result.mapped.items() if v == (component, target))].delta(param.float(), 1.0)
            assert delta is not None and delta.shape == param.shape


def test_transformers_4_and_5_spellings_both_resolve() -> None:
    flat = keymap_for_module("text_encoder", tiny_sd1()["text_encoder"])  # transformers 5: no text_model.
    assert "text_model.encoder.layers.0.self_attn.q_proj" not in {n for n, _ in tiny_sd1()["text_encoder"].named_modules()}
    for path in ("text_model_encoder_layers_0_self_attn_q_proj", "encoder_layers_0_self_attn_q_proj"):
        assert flat.lookup(path) == flat.lookup("text_model_encoder_layers_0_self_attn_q_proj")
        assert flat.lookup(path) is not None and flat.lookup(path).module == "encoder.layers.0.self_attn.q_proj"  # type: ignore[union-attr]
    nested = a1111_keymaps("sd1")["text_encoder"]
    assert nested.lookup("encoder_layers_1_mlp_fc2").module == "text_model.encoder.layers.1.mlp.fc2"  # type: ignore[union-attr]


def test_a1111_roots_and_internal_prefixes() -> None:
    unet = a1111_keymaps("sdxl")["unet"]
    assert unet.root == "model.diffusion_model."
    direct = unet.lookup("input_blocks_4_1_transformer_blocks_0_attn2_to_k")
    assert direct is not None and direct.module == "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k"
    assert unet.lookup("diffusion_model_input_blocks_4_1_transformer_blocks_0_attn2_to_k") == direct
    assert unet.lookup("down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k") == direct
    up = unet.lookup("up_blocks_0_upsamplers_0_conv")
    assert up is not None and up.module.endswith("output_blocks.2.2.conv")  # SDXL up level 0 has attention
    sd1 = a1111_keymaps("sd1")["unet"].lookup("up_blocks_0_upsamplers_0_conv")
    assert sd1 is not None and sd1.module.endswith("output_blocks.2.1.conv")


def test_names_without_shapes_still_map() -> None:
    names = [n for n, _ in tiny_sd1()["unet"].named_modules()]
    keymap = build_keymap("unet", names)
    assert keymap.lookup("input_blocks_1_1_proj_in") == keymap.lookup("down_blocks_0_attentions_0_proj_in")
    assert keymap.lookup("down_blocks_0_attentions_0_proj_in") is not None
