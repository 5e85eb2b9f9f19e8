"""convert: kohya <-> PEFT, bit-exact round trips, files the real loaders accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from safetensors import safe_open

from loraprompt.errors import ToolError
from loraprompt.tools.convert import convert_lora
from loraprompt.tools.io import RECIPE_KEY, load_tensors
from tests.fixtures.models import tiny_sd1


def _fuse(state_dict: dict[str, torch.Tensor], metadata: dict | None) -> dict[str, torch.Tensor]:
    """Load a diffusers-layout LoRA into fresh tiny SD1 models with diffusers, fuse it, return the weights."""
    models = tiny_sd1(seed=0)
    unet_sd = {k[len("unet."):]: v for k, v in state_dict.items() if k.startswith("unet.")}
    StableDiffusionLoraLoaderMixin.load_lora_into_unet(
        {f"unet.{k}": v for k, v in unet_sd.items()}, None, models["unet"],
        metadata=metadata)
    models["unet"].fuse_lora()
    models["unet"].unload_lora()
    return {k: v.clone() for k, v in models["unet"].state_dict().items()}


def _meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def test_kohya_peft_kohya_round_trip_is_bit_exact(tmp_path: Path, kohya_file: Path) -> None:
    peft = convert_lora(kohya_file, tmp_path / "peft.safetensors", "peft").output
    back = convert_lora(peft, tmp_path / "back.safetensors", "kohya").output
    original, original_meta = load_tensors(kohya_file)
    again, again_meta = load_tensors(back)
    assert sorted(original) == sorted(again)
    for key, tensor in original.items():
        assert again[key].dtype == tensor.dtype and torch.equal(again[key], tensor), key
    again_meta.pop(RECIPE_KEY)
    assert again_meta == original_meta


def test_diffusers_file_round_trips_through_kohya(tmp_path: Path, diffusers_file: Path) -> None:
    kohya = convert_lora(diffusers_file, tmp_path / "k.safetensors", "kohya").output
    back = convert_lora(kohya, tmp_path / "p.safetensors", "peft").output
    original, _ = load_tensors(diffusers_file)
    again, meta = load_tensors(back)
    # the file's transformers-5 text-encoder names come back in the transformers-4 spelling kohya
    # (and A1111) use, which diffusers loads under either transformers
    original = {k.replace("text_encoder.encoder.", "text_encoder.text_model.encoder."): v for k, v in original.items()}
    assert sorted(original) == sorted(again)
    assert all(torch.equal(original[k], again[k]) for k in original)
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["unet.lora_alpha"] == 8 and config["unet.r"] == 4
    assert json.loads(meta[RECIPE_KEY])["tool"] == "convert"


def test_peft_output_loads_in_diffusers_with_the_same_delta(tmp_path: Path, diffusers_file: Path) -> None:
    """diffusers fuses our PEFT file (converted from kohya) exactly like the file diffusers wrote."""
    kohya = convert_lora(diffusers_file, tmp_path / "k.safetensors", "kohya").output
    ours = convert_lora(kohya, tmp_path / "ours.safetensors", "peft").output
    ref_sd, ref_meta = load_tensors(diffusers_file)
    our_sd, our_meta = load_tensors(ours)
    reference = _fuse(ref_sd, json.loads(ref_meta["lora_adapter_metadata"]))
    fused = _fuse(our_sd, json.loads(our_meta["lora_adapter_metadata"]))
    base = tiny_sd1(seed=0)["unet"].state_dict()
    changed = [k for k in reference if not torch.equal(reference[k], base[k])]
    assert len(changed) > 50
    for key in reference:
        assert torch.equal(fused[key], reference[key]), key


def test_existing_output_needs_force(tmp_path: Path, kohya_file: Path) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(ToolError, match="--force"):
        convert_lora(kohya_file, out, "peft")
    assert out.read_bytes() == b"keep me"
    convert_lora(kohya_file, out, "peft", force=True)
    assert "lora_adapter_metadata" in _meta(out)


def test_refuses_to_overwrite_its_input_even_with_force(kohya_file: Path) -> None:
    with pytest.raises(ToolError, match="input"):
        convert_lora(kohya_file, kohya_file, "kohya", force=True)


def test_bad_input_leaves_no_output(tmp_path: Path) -> None:
    from loraprompt.errors import AdapterFileError

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(AdapterFileError, match=r"bad\.safetensors"):
        convert_lora(bad, tmp_path / "out.safetensors", "peft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_read_adapter_sees_identical_deltas_in_every_layout(tmp_path: Path, kohya_file: Path) -> None:
    from loraprompt.adapters import read_adapter
    from loraprompt.keymaps import keymap_for_module

    peft = convert_lora(kohya_file, tmp_path / "p.safetensors", "peft").output
    back = convert_lora(peft, tmp_path / "k.safetensors", "kohya").output
    adapters = [read_adapter(p) for p in (kohya_file, peft, back)]
    assert adapters[1].format != adapters[0].format
    base = tiny_sd1(seed=0)
    keymaps = {c: keymap_for_module(c, m) for c, m in base.items()}
    modules = {c: dict(m.named_modules()) for c, m in base.items()}

    def deltas(adapter: object) -> dict[str, torch.Tensor]:
        out = {}
        for module in adapter.modules.values():  # type: ignore[attr-defined]
            target = keymaps[module.component].lookup(module.path)
            weight = modules[module.component][target.module].weight.float()
            out[target.module] = module.delta(weight, 0.8)[0]
        return out

    reference = deltas(adapters[0])
    assert len(reference) == len(adapters[0].modules)
    for other in adapters[1:]:
        got = deltas(other)
        assert sorted(got) == sorted(reference)
        assert all(torch.equal(got[k], reference[k]) for k in reference)


def test_our_kohya_writer_matches_diffusers_converter(tmp_path: Path, diffusers_file: Path) -> None:
    """Same keys and tensors as diffusers' convert_state_dict_to_kohya, plus the alpha it omits."""
    from diffusers.utils import convert_state_dict_to_kohya

    from loraprompt.tools.lora import read_lora
    from loraprompt.tools.writer import kohya_tensors

    source, _ = load_tensors(diffusers_file)
    theirs = convert_state_dict_to_kohya({k: v for k, v in source.items() if k.startswith("unet.")})
    ours = kohya_tensors(m for m in read_lora(diffusers_file).modules.values() if m.component == "unet")
    assert {k for k in ours if not k.endswith(".alpha")} == {k for k in theirs if not k.endswith(".alpha")}
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if not k.endswith(".alpha"))
    assert {float(v) for k, v in ours.items() if k.endswith(".alpha")} == {8.0}


@pytest.mark.parametrize("options", [{"use_rslora": True}, {"alpha_pattern": {"to_q": 16, "attn1.to_q": 2}}])
def test_peft_alpha_rules_are_followed(tmp_path: Path, options: dict) -> None:
    """use_rslora scales by alpha/sqrt(r); the first matching alpha_pattern wins, as in PEFT."""
    from peft import LoraConfig, get_peft_model_state_dict

    from loraprompt.adapters import read_adapter
    from loraprompt.tools.lora import read_lora

    models = tiny_sd1(seed=0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"], init_lora_weights=False, **options)
    models["unet"].add_adapter(config)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(models["unet"]),
        unet_lora_adapter_metadata=config.to_dict(), weight_name="rs.safetensors")
    path = tmp_path / "rs.safetensors"
    state, meta = load_tensors(path)
    fused, base = _fuse(state, json.loads(meta["lora_adapter_metadata"])), tiny_sd1(seed=0)["unet"].state_dict()
    modules = read_lora(path).modules
    assert modules
    for module in modules.values():
        key = f"{module.dotted}.weight"
        torch.testing.assert_close(module.delta(), fused[key] - base[key], rtol=1e-4, atol=1e-5)
        assert read_adapter(path).modules[module.key].scale == pytest.approx(module.scale)


@pytest.mark.parametrize("alpha", [torch.ones(2), torch.tensor(0.0)])
def test_bad_alpha_is_refused_naming_file_and_key(tmp_path: Path, alpha: torch.Tensor) -> None:
    from safetensors.torch import save_file

    from loraprompt.errors import AdapterFileError

    bad = tmp_path / "bad.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.ones(2, 8), f"{name}.lora_up.weight": torch.ones(8, 2),
               f"{name}.alpha": alpha}, str(bad))
    with pytest.raises(AdapterFileError, match=rf"bad\.safetensors.*{name.removeprefix('lora_unet_')}.*alpha"):
        convert_lora(bad, tmp_path / "out.safetensors", "peft")


def test_peft_metadata_that_is_not_an_object_is_ignored_like_read_adapter_does(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loraprompt.adapters import read_adapter
    from loraprompt.tools.lora import read_lora

    path = tmp_path / "odd.safetensors"
    name = "unet.down_blocks.0.attentions.0.proj_in"
    save_file({f"{name}.lora_A.weight": torch.ones(2, 8), f"{name}.lora_B.weight": torch.ones(8, 2)}, str(path),
              metadata={"lora_adapter_metadata": "[1]"})
    [module] = read_lora(path).modules.values()
    assert module.alpha is None and read_adapter(path).modules[module.key].alpha is None


def test_a_tensor_named_twice_is_refused(tmp_path: Path) -> None:
    import struct

    from loraprompt.errors import AdapterFileError

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    entry = '{"dtype": "F32", "shape": [2, 8], "data_offsets": [%d, %d]}'
    header = (f'{{"{name}.lora_up.weight": {entry % (0, 64)}, "{name}.lora_down.weight": {entry % (64, 128)}, '
              f'"{name}.lora_down.weight": {entry % (64, 128)}}}').replace("[2, 8], \"data_offsets\": [0, 64]",
                                                                         "[8, 2], \"data_offsets\": [0, 64]")
    raw = header.encode()
    bad = tmp_path / "twice.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 128)
    with pytest.raises(AdapterFileError, match=r"twice\.safetensors.*twice"):
        convert_lora(bad, tmp_path / "out.safetensors", "peft")
    assert not (tmp_path / "out.safetensors").exists()


def test_nan_lora_is_refused_naming_file_and_module(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loraprompt.errors import AdapterFileError
    from loraprompt.tools.resize import resize_lora
    from loraprompt.tools.svd import RankTarget

    bad = tmp_path / "nan.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    up = torch.ones(8, 2)
    up[1, 1] = float("nan")
    save_file({f"{name}.lora_down.weight": torch.ones(2, 8), f"{name}.lora_up.weight": up}, str(bad))
    with pytest.raises(AdapterFileError, match=r"nan\.safetensors.*proj_in.*NaN"):
        resize_lora(bad, tmp_path / "out.safetensors", RankTarget(rank=1))


def test_an_alpha_the_factors_dtype_cannot_hold_is_kept_exactly(tmp_path: Path) -> None:
    """kohya stores `.alpha` in the factors' dtype; a PEFT file's alpha comes from JSON and may not
    fit it (rsLoRA's alpha·√r: 45.2548 is 45.25 in fp16). convert said 'tensors unchanged' but the
    scale moved by 1e-4; such an alpha is now written in float32, an exact one still in fp16."""
    from tests.fixtures.loras import write_diffusers_lora

    for alpha, dtype in ((45.2548, torch.float32), (8.0, torch.float16)):
        src = write_diffusers_lora("sd1", tmp_path / f"p{alpha}.safetensors", alpha=alpha, dtype=torch.float16).path
        out = convert_lora(src, tmp_path / f"k{alpha}.safetensors", "kohya").output
        alphas = [v for k, v in load_tensors(out)[0].items() if k.endswith(".alpha")]
        assert alphas and all(a.dtype == dtype and float(a) == float(torch.tensor(alpha, dtype=dtype)) for a in alphas)


def test_a_module_spelled_twice_is_refused_naming_the_key(tmp_path: Path, kohya_file: Path) -> None:
    """`lora_te_X` and `lora_te1_X` are one module: read_lora kept whichever came last, silently,
    where read_adapter (the patcher's reader) refuses the file."""
    from safetensors.torch import save_file

    from loraprompt.errors import AdapterFileError
    from loraprompt.tools.lora import read_lora

    tensors, meta = load_tensors(kohya_file)
    te = next(k for k in tensors if k.startswith("lora_te_") and k.endswith(".lora_down.weight"))
    twice = tmp_path / "twice.safetensors"
    save_file({**tensors, te.replace("lora_te_", "lora_te1_", 1): tensors[te] * 2}, str(twice), metadata=meta)
    with pytest.raises(AdapterFileError, match=r"in the file twice") as caught:
        read_lora(twice)
    assert caught.value.key in (te, te.replace("lora_te_", "lora_te1_", 1))
