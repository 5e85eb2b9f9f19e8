"""SD3, Flux.1, Flux.2 and Wan 2.x LoRAs in every layout, on tiny diffusers transformers built from config.

The reference is always diffusers: the PEFT file written by `save_lora_weights`, loaded and fused
by diffusers; where diffusers' own converter reads a layout on the tiny models, that too. The
other layouts (kohya, ComfyUI, BFL/ai-toolkit, XLabs, musubi) hold the same weights, so every
layout's patch must equal the PEFT file's fuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraprompt import Patcher, read_adapter
from loraprompt.errors import FamilyMismatchError, PatchError
from tests.fixtures import dit

STRENGTH = 0.7
NATIVE = [
    ("flux", "kohya", "kohya"), ("flux", "comfyui", "comfyui"), ("flux", "bfl", "comfyui"), ("flux", "xlabs", "xlabs"),
    ("sd3", "kohya", "kohya"), ("sd3", "comfyui", "comfyui"), ("sd3", "bfl", "comfyui"),
    ("wan", "musubi", "kohya"), ("wan", "comfyui", "comfyui"), ("wan", "bfl", "comfyui"),
    ("flux2", "kohya", "kohya"), ("flux2", "comfyui", "comfyui"), ("flux2", "bfl", "comfyui"),
]


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dit.PeftLora, dict[str, torch.Tensor]]]:
    """Per family: the PEFT file and the weights diffusers fuses from it at STRENGTH."""
    root = tmp_path_factory.mktemp("dit")
    out = {}
    for family in dit.CONFIGS:
        lora = dit.write_peft(family, root / family / "peft.safetensors")
        out[family] = (lora, dit.peft_fused(lora, STRENGTH))
    return out


def _patched(family: str, path: Path, strength: float = STRENGTH) -> tuple[dict[str, torch.Tensor], Patcher, torch.nn.Module]:
    model = dit.tiny_transformer(family)
    patcher = Patcher({"transformer": model})
    report = patcher.sync([(read_adapter(path), strength, strength)])
    assert report.diagnostics == []
    return {k: v.clone() for k, v in model.state_dict().items()}, patcher, model


def _assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("family", list(dit.CONFIGS))
def test_peft_file_equals_diffusers_fuse_and_restores(loras: dict, family: str) -> None:
    lora, ref = loras[family]
    adapter = read_adapter(lora.path)
    assert (adapter.family, adapter.format, adapter.components()) == (family, "diffusers", {"transformer"})
    assert len(adapter.modules) == len(lora.factors)
    base = {k: v.clone() for k, v in dit.tiny_transformer(family).state_dict().items()}
    ours, patcher, model = _patched(family, lora.path)
    _assert_close(ours, ref)
    assert sum(not torch.equal(ours[k], base[k]) for k in base) == len(lora.factors)
    patcher.restore()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_peft_file_without_adapter_metadata_uses_alpha_equal_rank(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "nometa.safetensors", alpha=16.0, metadata=False)
    assert lora.scale == 1.0
    ours, _, _ = _patched("flux", lora.path)
    _assert_close(ours, dit.peft_fused(lora, STRENGTH))


@pytest.mark.parametrize(("family", "layout", "scheme"), NATIVE)
def test_native_layouts_equal_the_peft_fuse(loras: dict, tmp_path: Path, family: str, layout: str, scheme: str) -> None:
    lora, ref = loras[family]
    path = dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout)
    adapter = read_adapter(path)
    assert (adapter.family, adapter.format, adapter.components()) == (family, scheme, {"transformer"})
    ours, _, _ = _patched(family, path)
    base = dit.tiny_transformer(family).state_dict()
    changed = {k for k in base if not torch.equal(ours[k], base[k])}
    if layout == "xlabs":  # XLabs adapts the double blocks' attention only
        assert changed and all(".attn.to_" in k or ".attn.add_" in k for k in changed)
        ref = {k: ref[k] if k in changed else base[k] for k in base}
    _assert_close(ours, ref)


def _blocks_only(native: str) -> bool:
    return native.startswith("blocks.")


def _flux_blocks(native: str) -> bool:
    # diffusers' kohya converter hard-codes Flux.1-dev's 3072/12288 rows for linear1, and names
    # img_in/txt_in/time_in/vector_in/guidance_in/final_layer without the `transformer.` prefix it
    # then filters on (they are dropped); those are checked against the PEFT file's fuse above
    return native.startswith(("double_blocks.", "single_blocks.")) and not native.endswith(".linear1")


def _not_final_layer(native: str) -> bool:
    # diffusers' Flux.2 LoRA converter leaves the final adaLN's (shift, scale) halves in BFL's order;
    # its checkpoint converter swaps them (swap_scale_shift), and so do we (keymaps.dit.FLUX2)
    return not native.startswith("final_layer.adaLN")


def _flux2_blocks(native: str) -> bool:
    # diffusers' kohya Flux.2 converter leaves out guidance_in and the modulations (it warns: unsupported keys)
    return native.startswith(("double_blocks.", "single_blocks."))


@pytest.mark.parametrize(
    ("family", "layout", "include"),
    [("flux", "kohya", _flux_blocks), ("flux", "comfyui", _flux_blocks), ("flux", "xlabs", None),
     ("wan", "bfl", None), ("wan", "musubi", _blocks_only), ("wan", "comfyui", _blocks_only),
     ("flux2", "bfl", _not_final_layer), ("flux2", "kohya", _flux2_blocks)],
)
def test_diffusers_converters_read_our_files_as_we_do(loras: dict, tmp_path: Path, family: str, layout: str, include: object) -> None:
    lora, _ = loras[family]
    path = dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout, include=include)
    ours, _, _ = _patched(family, path)
    theirs = dit.diffusers_fused(family, path, STRENGTH)
    base = dit.tiny_transformer(family).state_dict()
    assert any(not torch.equal(theirs[k], base[k]) for k in base)
    _assert_close(ours, theirs)


def _fused_qkv_file(tmp_path: Path, algo: str) -> tuple[Path, torch.Tensor]:
    """A LyCORIS module on Flux's fused `double_blocks.0.img_attn.qkv` (48 x 16 in the tiny model)
    and the ΔW LyCORIS' own functional code computes for it (alpha/rank applied)."""
    from lycoris.functional import loha, lokr

    gen = torch.Generator().manual_seed(5)
    rnd = lambda *shape: torch.randn(*shape, generator=gen) * 0.3  # noqa: E731
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    alpha, rank = 2.0, 4
    if algo == "loha":
        w1a, w1b, w2a, w2b = rnd(48, rank), rnd(rank, 16), rnd(48, rank), rnd(rank, 16)
        tensors = {f"{key}.hada_w1_a": w1a, f"{key}.hada_w1_b": w1b, f"{key}.hada_w2_a": w2a, f"{key}.hada_w2_b": w2b}
        delta = loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=alpha / rank)
    else:
        w1, w2a, w2b = rnd(4, 2), rnd(12, rank), rnd(rank, 8)
        tensors = {f"{key}.lokr_w1": w1, f"{key}.lokr_w2_a": w2a, f"{key}.lokr_w2_b": w2b}
        delta = lokr.diff_weight(w1, None, None, None, w2a, w2b, None, gamma=alpha)  # divides by the rank itself
    tensors[f"{key}.alpha"] = torch.tensor(alpha)
    path = tmp_path / f"{algo}.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_module": "lycoris.kohya", "modelspec.architecture": "flux-1-dev/lycoris"})
    return path, delta


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_on_flux_fused_qkv_splits_by_rows(tmp_path: Path, algo: str) -> None:
    path, delta = _fused_qkv_file(tmp_path, algo)
    adapter = read_adapter(path)
    assert (adapter.family, adapter.format, adapter.algorithms()) == ("flux", "lycoris", {algo})
    base = dit.tiny_transformer("flux").state_dict()
    ours, patcher, model = _patched("flux", path, 1.0)
    for i, proj in enumerate(("to_q", "to_k", "to_v")):
        key = f"transformer_blocks.0.attn.{proj}.weight"
        torch.testing.assert_close(ours[key], base[key] + delta[16 * i : 16 * (i + 1)], rtol=0, atol=1e-6)
    assert sum(not torch.equal(ours[k], base[k]) for k in base) == 3
    patcher.restore()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("file_family", "model_family"), [("flux", "sd3"), ("sd3", "flux"), ("wan", "flux"), ("flux", "wan"),
                                                           ("flux2", "flux"), ("flux", "flux2")])
def test_wrong_family_is_refused_by_name_and_the_model_untouched(loras: dict, file_family: str, model_family: str) -> None:
    lora, _ = loras[file_family]
    model = dit.tiny_transformer(model_family)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    names = {"flux": "Flux.1", "flux2": "Flux.2", "sd3": "SD3", "wan": "Wan 2.x"}
    with pytest.raises(FamilyMismatchError, match=rf"is a {names[file_family]} adapter; the loaded model is {names[model_family]}"):
        Patcher({"transformer": model}).sync([(read_adapter(lora.path), 1.0, 1.0)])
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layout", ["kohya", "bfl"])
def test_a_natively_named_flux2_file_is_refused_by_a_flux1_model(loras: dict, tmp_path: Path, layout: str) -> None:
    """Flux.2's native names are Flux.1's; its fused heights tell them apart (see keymaps.family)."""
    lora, _ = loras["flux2"]
    path = dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout)
    model = dit.tiny_transformer("flux")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FamilyMismatchError, match=r"is a Flux\.2 adapter; the loaded model is Flux\.1"):
        Patcher({"transformer": model}).sync([(read_adapter(path), 1.0, 1.0)])
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_flux_lora_on_sdxl_and_sd1_lora_on_flux_are_refused(loras: dict, tmp_path: Path) -> None:
    from tests.fixtures.loras import write_kohya_lora
    from tests.fixtures.models import tiny_sdxl

    flux, _ = loras["flux"]
    sdxl = tiny_sdxl()
    with pytest.raises(FamilyMismatchError, match=r"is a Flux\.1 adapter; the loaded model is SDXL"):
        Patcher(sdxl).sync([(read_adapter(flux.path), 1.0, 1.0)])
    sd1 = write_kohya_lora("sd1", tmp_path / "sd1.safetensors")
    model = dit.tiny_transformer("flux")
    with pytest.raises(FamilyMismatchError, match=r"is a SD1\.x adapter; the loaded model is Flux\.1"):
        Patcher({"transformer": model}).sync([(read_adapter(sd1.path), 1.0, 1.0)])


def test_unknown_layout_lists_the_first_unmatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    keys = [f"lora_unet_decoder_{i}_proj" for i in range(4)]
    save_file({f"{k}.{p}": torch.ones(2, 16) if p == "lora_down.weight" else torch.ones(16, 2) for k in keys for p in ("lora_down.weight", "lora_up.weight")}, str(path))
    with pytest.raises(PatchError, match=r"none of its 4 modules matches the loaded model \(e\.g\. unet/decoder_\d_proj\)"):
        Patcher({"transformer": dit.tiny_transformer("flux")}).sync([(read_adapter(path), 1.0, 1.0)])


def test_a_t5_lora_on_a_model_without_t5_says_so(loras: dict, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    lora, ref = loras["sd3"]
    t5 = {f"lora_te3_encoder_block_0_layer_0_SelfAttention_{p}.{part}": torch.ones(2, 8) if part == "lora_down.weight" else torch.ones(8, 2)
          for p in "qkv" for part in ("lora_down.weight", "lora_up.weight")}
    both = tmp_path / "both.safetensors"
    with safe_open(str(lora.path), "pt") as f:
        metadata = f.metadata()
    save_file({**load_file(str(lora.path)), **t5}, str(both), metadata=metadata)
    model = dit.tiny_transformer("sd3")
    report = Patcher({"transformer": model}).sync([(read_adapter(both), STRENGTH, STRENGTH)])
    (diag,) = report.diagnostics
    assert diag.code == "lora-component-missing"
    assert "3 modules target a T5 text encoder (text_encoder_3) (e.g. text_encoder_3/encoder_block_0_layer_0_SelfAttention_k, " in diag.message
    assert diag.message.endswith("which the loaded model does not have; they are not applied")
    _assert_close({k: v for k, v in model.state_dict().items()}, ref)
    only = tmp_path / "t5.safetensors"
    save_file(t5, str(only))
    with pytest.raises(PatchError, match="3 modules target a T5 text encoder"):
        Patcher({"transformer": dit.tiny_transformer("sd3")}).sync([(read_adapter(only), 1.0, 1.0)])
