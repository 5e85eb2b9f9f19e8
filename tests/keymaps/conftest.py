"""Loaded-model namings for the key-map tests: diffusers modules and A1111's LDM/SGM + OpenCLIP names.

The LDM/SGM UNet names come from `loraprompt.keymaps.unet.to_ldm`, which test_unet_names_*
checks against diffusers' own LDM checkpoint converter; the OpenCLIP text towers are real
torch modules with OpenCLIP's module names (tests/fixtures/models.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
from torch import nn

from loraprompt.keymaps import KeyMap, build_keymap, keymap_for_module
from loraprompt.keymaps import unet as unet_names
from tests.fixtures.loras import ToolLoraCache
from tests.fixtures.models import (
    MLP_RATIO,
    SD2_TEXT_WIDTH,
    SDXL_TEXT_WIDTHS,
    tiny_openclip_text,
    tiny_sd1,
    tiny_sd2,
    tiny_sdxl,
)

FAMILY_MODELS = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl}
LDM_ROOT = "model.diffusion_model."


def ldm_unet_names(unet: nn.Module, root: str = LDM_ROOT) -> tuple[list[str], dict[str, Sequence[int]]]:
    """(module names, param shapes) of the LDM/SGM UNet that holds the same weights as `unet`."""
    names = {n for n, _ in unet.named_modules()}
    up_attn = unet_names.up_levels_with_attention(names)
    shapes: dict[str, Sequence[int]] = {}
    modules: set[str] = set()
    for key, param in unet.named_parameters():
        module, _, pname = key.rpartition(".")
        ldm = unet_names.to_ldm(module, up_attn)
        assert ldm is not None, key
        modules.add(root + ldm)
        shapes[f"{root}{ldm}.{pname}"] = tuple(param.shape)
    return sorted(modules), shapes


def diffusers_keymaps(family: str) -> dict[str, KeyMap]:
    return {c: keymap_for_module(c, m) for c, m in FAMILY_MODELS[family]().items()}


def a1111_keymaps(family: str) -> dict[str, KeyMap]:
    """Key maps of the components the A1111 glue hands over for this family."""
    models = FAMILY_MODELS[family]()
    names, shapes = ldm_unet_names(models["unet"])
    maps = {"unet": build_keymap("unet", names, shapes)}
    if family == "sd1":
        maps["text_encoder"] = _prefixed_keymap("text_encoder", models["text_encoder"], "text_model.")
    elif family == "sd2":
        maps["text_encoder"] = keymap_for_module("text_encoder", tiny_openclip_text(SD2_TEXT_WIDTH, mlp_ratio=MLP_RATIO))
    else:
        maps["text_encoder"] = _prefixed_keymap("text_encoder", models["text_encoder"], "text_model.")
        maps["text_encoder_2"] = keymap_for_module("text_encoder_2", tiny_openclip_text(SDXL_TEXT_WIDTHS[1], mlp_ratio=MLP_RATIO))
    return maps


def _prefixed_keymap(component: str, module: nn.Module, prefix: str) -> KeyMap:
    """transformers-4 naming (`text_model.` level) of a transformers-5 flattened CLIPTextModel."""
    names = [prefix + n if n else n for n, _ in module.named_modules()]
    shapes: Mapping[str, Sequence[int]] = {prefix + n: tuple(p.shape) for n, p in module.named_parameters()}
    return build_keymap(component, names, shapes)


@pytest.fixture(scope="session")
def tool_loras(tmp_path_factory: pytest.TempPathFactory) -> ToolLoraCache:
    """Tool-written adapter files, each written once per session."""
    return ToolLoraCache(tmp_path_factory.mktemp("tool-loras"))
