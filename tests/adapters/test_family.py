"""One family detector for the reader and the library: real files, shapes first, then names, then metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loraprompt import read_adapter
from loraprompt.keymaps.family import detect_file_family
from loraprompt.library import Library
from tests.fixtures import dit
from tests.fixtures.loras import write_diffusers_lora, write_kohya_lora, write_lycoris


def _with_metadata(path: Path, extra: dict[str, str], keep: str = "") -> Path:
    """The file again with `extra` added to its header (and only the keys starting with `keep`)."""
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    tensors = {k: v for k, v in load_file(str(path)).items() if k.startswith(keep)}
    save_file(tensors, str(path), metadata={**metadata, **extra})
    return path


def _library_family(path: Path, tmp_path: Path) -> tuple[str | None, str | None, tuple[str, ...]]:
    (entry,) = [e for e in Library([path.parent], cache_dir=tmp_path / "cache").entries if e.path == str(path)]
    return entry.family, entry.family_source, entry.notes


def test_sd1_lora_with_lora_te1_keys_is_sd1_in_the_reader_and_the_library(tmp_path: Path) -> None:
    """issue 15, bug 1: diffusers' convert_state_dict_to_kohya writes `lora_te1_` for SD1."""
    path = write_kohya_lora("sd1", tmp_path / "lib" / "sd1.safetensors").path
    _with_metadata(path, {"ss_base_model_version": "sd_v1"})
    assert any(k.startswith("lora_te1_") for k in load_file(str(path)))
    adapter = read_adapter(path)
    assert (adapter.family, adapter.family_source, adapter.family_conflict) == ("sd1", "keys", None)
    assert _library_family(path, tmp_path) == ("sd1", "keys", ())


def test_sd1_text_encoder_only_lora_te1_file_falls_back_to_metadata(tmp_path: Path) -> None:
    path = write_kohya_lora("sd1", tmp_path / "lib" / "te.safetensors").path
    _with_metadata(path, {"ss_base_model_version": "sd_v1"}, keep="lora_te1_")
    assert read_adapter(path).family == "sd1"
    assert _library_family(path, tmp_path) == ("sd1", "metadata", ())


def test_metadata_that_disagrees_with_the_shapes_is_a_note(tmp_path: Path) -> None:
    path = write_kohya_lora("sdxl", tmp_path / "lib" / "xl.safetensors").path
    _with_metadata(path, {"ss_base_model_version": "sd_v1"})
    note = "the metadata says SD1.x, the tensor names and shapes say SDXL"
    adapter = read_adapter(path)
    assert (adapter.family, adapter.family_conflict) == ("sdxl", note)
    assert _library_family(path, tmp_path) == ("sdxl", "keys", (note,))



def test_read_adapter_takes_a_library_entry(tmp_path: Path) -> None:
    """read_adapter(entry) raised TypeError ('expected str, bytes or os.PathLike object, not
    Entry'): an entry from Library.entries or resolve() had to be read as read_adapter(entry.path).
    It reads the entry's file, the same adapter as by path; anything else is refused by name."""
    path = write_kohya_lora("sd1", tmp_path / "Lora" / "style.safetensors").path
    lib = Library([tmp_path / "Lora"], cache_dir=tmp_path / "cache")
    entry = lib.resolve("style").entry
    assert entry is not None and lib.entries == [entry] and entry.path == str(path)
    by_entry, by_path = read_adapter(entry), read_adapter(path)
    assert (by_entry.path, by_entry.name, by_entry.family) == (str(path), "style", "sd1")
    assert (by_entry.format, by_entry.size, by_entry.mtime_ns) == (by_path.format, by_path.size, by_path.mtime_ns)
    assert by_entry.modules.keys() == by_path.modules.keys()
    for key, module in by_entry.modules.items():
        assert module.tensors.keys() == by_path.modules[key].tensors.keys()
        assert all(torch.equal(t, by_path.modules[key].tensors[part]) for part, t in module.tensors.items())
    assert read_adapter(entry, mode="a1111").modules.keys() == by_path.modules.keys()
    with pytest.raises(TypeError, match="a path or a library Entry, not NoneType"):
        read_adapter(None)  # type: ignore[arg-type]

@pytest.mark.parametrize(
    ("write", "family", "source"),
    [
        (lambda p: write_diffusers_lora("sd1", p).path, "sd1", "keys"),
        (lambda p: write_diffusers_lora("sd2", p).path, "sd2", "keys"),
        (lambda p: write_kohya_lora("sd2", p).path, "sd2", "keys"),
        (lambda p: write_kohya_lora("sdxl", p).path, "sdxl", "keys"),
        # LoHa factors are 2-D even on convs and the tiny widths are no real model's: metadata decides
        (lambda p: write_lycoris("sd1", p, "loha").path, "sd1", "metadata"),
        (lambda p: write_lycoris("sdxl", p, "lokr").path, "sdxl", "keys"),
        (lambda p: dit.write_peft("flux", p).path, "flux", "keys"),
        (lambda p: dit.write_peft("sd3", p).path, "sd3", "keys"),
        (lambda p: dit.write_peft("wan", p).path, "wan", "keys"),
        (lambda p: dit.write_peft("flux2", p).path, "flux2", "keys"),
        (lambda p: dit.native_file(dit.write_peft("flux2", p.with_name("peft.safetensors")), p, "comfyui"), "flux2", "keys"),
        (lambda p: dit.native_file(dit.write_peft("flux", p.with_name("peft.safetensors")), p, "kohya"), "flux", "keys"),
    ],
)
def test_reader_and_library_agree(tmp_path: Path, write: object, family: str, source: str) -> None:
    path = write(tmp_path / "lib" / "x.safetensors")  # type: ignore[operator]
    adapter = read_adapter(path)
    assert (adapter.family, adapter.family_source) == (family, source)
    assert _library_family(path, tmp_path)[:2] == (family, source)


@pytest.mark.parametrize(
    ("metadata", "family"),
    [
        ({"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
        ({"ss_base_model_version": "flux1"}, "flux"),
        ({"modelspec.architecture": "stable-diffusion-v3-medium/lora"}, "sd3"),
        ({"modelspec.architecture": "stable-diffusion-3.5-large/lora"}, "sd3"),
        ({"modelspec.architecture": "wan2.1-t2v-14b/lora"}, "wan"),
        ({"ss_base_model_version": "flux2_klein_4b"}, "flux2"),
        ({"modelspec.architecture": "flux-2-dev/lora"}, "flux2"),
        ({}, None),
    ],
)
def test_sd3_or_flux_in_diffusers_names_with_unknown_widths_ask_the_metadata(metadata: dict[str, str], family: str | None) -> None:
    shapes = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 16),
              "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": (4, 16)}
    found = detect_file_family(shapes, metadata)
    assert (found.family, found.denoiser) == (family, "transformer")


@pytest.mark.parametrize(("width", "family"), [(3072, "flux"), (6144, "flux2"), (1536, "sd3"), (2432, "sd3")])
def test_sd3_and_flux_in_diffusers_names_told_apart_by_width(width: int, family: str) -> None:
    shapes = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (16, width),
              "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (width, 16)}
    assert detect_file_family(shapes, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}).family == family


def test_native_names_decide_without_shapes() -> None:
    assert detect_file_family({"lora_unet_single_blocks_3_linear1.lora_down.weight": (4, 8)}).family == "flux"
    # Flux.2 shares the native names; the fused heights tell it (9 widths for linear1, 7 in Flux.1)
    for ratio, family in ((9, "flux2"), (7, "flux")):
        for down, up in (("lora_down", "lora_up"), ("lora_A", "lora_B")):
            shapes = {f"diffusion_model.single_blocks.0.linear1.{down}.weight": (4, 64),
                      f"diffusion_model.single_blocks.0.linear1.{up}.weight": (64 * ratio, 4)}
            assert detect_file_family(shapes).family == family
    assert detect_file_family({"double_blocks.0.processor.qkv_lora1.down.weight": (4, 8)}).family == "flux"
    assert detect_file_family({"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (4, 8)}).family == "sd3"
    assert detect_file_family({"lora_unet_blocks_0_cross_attn_k.lora_down.weight": (4, 8)}).family == "wan"
    # SD's own `transformer_blocks` and `blocks` inside UNet names are not DiT evidence
    sd = detect_file_family({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)})
    assert (sd.family, sd.denoiser) == ("sd1", "unet")


def test_header_only_detection_needs_no_torch(tmp_path: Path) -> None:
    """The library reads headers only: the same verdict from shapes as from loaded tensors."""
    path = tmp_path / "x.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4)}, str(path))
    assert _library_family(path, tmp_path)[:2] == ("flux", "keys")


def test_gallery_cards_badge_dit_families(tmp_path: Path) -> None:
    from loraprompt.ui.cards import card_record

    path = dit.write_peft("flux", tmp_path / "lib" / "flux.safetensors").path
    (entry,) = Library([path.parent], cache_dir=tmp_path / "cache").entries
    record = card_record(entry, "flux", None, "flux")
    assert (record["family"], record["badge"], record["family_title"]) == ("flux", "Flux", "Flux (from the tensor shapes)")


def test_line_start_search_finds_the_same_keys_as_the_anchored_patterns() -> None:
    """The detector searches one newline-joined string with `^` patterns rewritten to start with
    the newline (the regex engine then skips to each key instead of trying every character): the
    keys found must be exactly those the original `^`/re.M pattern matches one by one."""
    from loraprompt.keymaps import family as fam
    from loraprompt.keymaps.dit import DIT_FAMILIES, MMDIT_FILE_KEYS, MMDIT_WIDTH_KEYS

    keys = [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
        "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.alpha",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
        "lora_te2_text_model_encoder_layers_3_mlp_fc1.lora_down.weight",
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight",
        "transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight",
        "transformer_blocks.12.attn.to_k.lora_B.weight",
        "diffusion_model.double_blocks.3.img_attn.qkv.lora_A.weight",
        "lora_unet_single_blocks_7_linear1.lora_down.weight",
        "transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj.lora_A.weight",
        "diffusion_model.single_blocks.1.linear1.lora_B.weight",
        "diffusion_model.joint_blocks.2.x_block.attn.qkv.lora_down.weight",
        "blocks.4.self_attn.q.lora_A.weight",
        "xdouble_blocks.1.img_mod.lin.lora_A.weight",  # not at a key's start: no family
        "unet.middle_block.1.proj_in.lora_down.weight",
    ]
    joined = "\n" + "\n".join(keys)
    patterns = [f.file_keys for f in DIT_FAMILIES] + [MMDIT_FILE_KEYS, MMDIT_WIDTH_KEYS, fam._TE1, fam._TE2, fam._SGM]
    for pattern in patterns:
        expected = [k for k in keys if pattern.search(k)]
        assert expected, pattern.pattern  # every pattern is exercised by at least one key
        assert list(fam._lines(joined, pattern)) == expected, pattern.pattern
        assert fam._search(pattern, joined)
        assert not fam._search(pattern, "\n" + "\n".join(k for k in keys if k not in expected))
