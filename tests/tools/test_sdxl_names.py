"""SDXL and LDM/SGM module names in the LoRA writers: kohya prefixes, PEFT and ComfyUI names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraprompt.errors import ToolError
from loraprompt.keymaps.unet import to_ldm, up_levels_with_attention
from loraprompt.tools.convert import convert_lora
from loraprompt.tools.extract import extract_lora
from loraprompt.tools.io import load_tensors
from loraprompt.tools.lora import read_lora
from loraprompt.tools.lora_merge import merge_loras
from loraprompt.tools.naming import dotted_name
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.svd import RankTarget
from tests.fixtures.loras import write_diffusers_lora, write_kohya_lora
from tests.fixtures.models import tiny_sdxl
from tests.tools.checkpoints import a1111_models, write_single_file

TE1_KEY = "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
UNET_KEY = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"


def _te_prefixes(path: Path) -> set[str]:
    return {k.split("_text_model")[0] for k in load_file(str(path)) if k.startswith("lora_te")}


def test_sdxl_file_adapting_only_clip_l_keeps_lora_te1(tmp_path: Path) -> None:
    """A1111 on SDXL maps lora_te1_/lora_te2_ only: lora_te_ there would silently do nothing."""
    tensors = load_file(str(write_kohya_lora("sdxl", tmp_path / "k.safetensors", sd_scripts_names=True).path))
    src = tmp_path / "te1only.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.startswith("lora_te2_")}, str(src),
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    assert _te_prefixes(src) == {"lora_te1"}
    convert_lora(src, tmp_path / "c.safetensors", "kohya")
    resize_lora(src, tmp_path / "r.safetensors", RankTarget(rank=2))
    assert _te_prefixes(tmp_path / "c.safetensors") == {"lora_te1"}
    assert _te_prefixes(tmp_path / "r.safetensors") == {"lora_te1"}


def _tuned_sdxl(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """An SDXL single file `base.safetensors` and `tuned.safetensors` beside it, where one CLIP-L
    weight (TE1_KEY) and one UNet weight (UNET_KEY) took a rank-1 change and CLIP-G none; returns
    the base's path and the tuned tensors."""
    base = tmp_path / "base.safetensors"
    write_single_file(a1111_models("sdxl"), "sdxl", base)
    tensors, meta = load_tensors(base)
    gen = torch.Generator().manual_seed(0)
    for key in (TE1_KEY, UNET_KEY):
        w = tensors[key]
        tensors[key] = w + 0.05 * torch.randn(w.shape[0], 1, generator=gen) @ torch.randn(1, w.shape[1], generator=gen)
    save_file(tensors, str(tmp_path / "tuned.safetensors"), metadata=meta)
    return base, tensors


def test_sdxl_extract_with_the_second_text_encoder_unchanged_writes_lora_te1(tmp_path: Path) -> None:
    base, _ = _tuned_sdxl(tmp_path)
    out = extract_lora(tmp_path / "tuned.safetensors", base, tmp_path / "x.safetensors", RankTarget(rank=2)).output
    assert _te_prefixes(out) == {"lora_te1"}


def _sgm_file(tmp_path: Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """An SDXL kohya LoRA with sd-scripts' SGM UNet names (`lora_unet_input_blocks_4_1_…`), and the
    weights PEFT gave the tiny models with it merged."""
    lora = write_kohya_lora("sdxl", tmp_path / "k.safetensors", seed=3, alpha=2.0, sd_scripts_names=True)
    unet = tiny_sdxl(seed=0)["unet"]
    up_attn = up_levels_with_attention({n for n, _ in unet.named_modules()})
    out = {}
    for key, tensor in load_file(str(lora.path)).items():
        name, _, part = key.partition(".")
        if name.startswith("lora_unet_"):
            ldm = to_ldm(dotted_name("unet", name.removeprefix("lora_unet_")), up_attn)
            assert ldm is not None, name
            name = "lora_unet_" + ldm.replace(".", "_")
        out[f"{name}.{part}"] = tensor
    path = tmp_path / "sgm.safetensors"
    save_file(out, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"})
    return path, lora.merged


def _diffusers_fused(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """diffusers' load_lora_weights + fuse_lora on fresh tiny SDXL models."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    models = tiny_sdxl(seed=0)
    pipe = StableDiffusionXLPipeline(vae=None, tokenizer=None, tokenizer_2=None, scheduler=EulerDiscreteScheduler(),
                                     **models)
    pipe.load_lora_weights(str(path), adapter_name="a")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return {c: {k: v.detach().clone() for k, v in m.state_dict().items()} for c, m in models.items()}


def _assert_fused(got: dict[str, dict[str, torch.Tensor]], expected: dict[str, dict[str, torch.Tensor]]) -> None:
    for component, state in expected.items():
        for key, tensor in state.items():
            torch.testing.assert_close(got[component][key], tensor, rtol=1e-5, atol=1e-6, msg=f"{component}.{key}")


def test_sgm_named_sdxl_lora_is_written_as_peft_that_diffusers_fuses_exactly(tmp_path: Path) -> None:
    src, merged = _sgm_file(tmp_path)
    assert any(k.startswith("lora_unet_input_blocks_") for k in load_file(str(src)))
    for out in (convert_lora(src, tmp_path / "c.safetensors", "peft").output,
                resize_lora(src, tmp_path / "r.safetensors", RankTarget(rank=4), fmt="peft").output):
        assert any(k.startswith("unet.down_blocks.1.attentions.0.") for k in load_file(str(out)))
        _assert_fused(_diffusers_fused(out), merged)


def test_a_ldm_module_with_no_diffusers_name_is_refused_by_name(tmp_path: Path) -> None:
    src = tmp_path / "odd.safetensors"
    save_file({"lora_unet_input_blocks_4_7_proj_in.lora_down.weight": torch.ones(2, 8),
               "lora_unet_input_blocks_4_7_proj_in.lora_up.weight": torch.ones(8, 2)}, str(src))
    with pytest.raises(ToolError, match="input_blocks_4_7_proj_in"):
        convert_lora(src, tmp_path / "c.safetensors", "peft")


def test_sdxl_extract_as_peft_uses_diffusers_names(tmp_path: Path) -> None:
    base, tensors = _tuned_sdxl(tmp_path)
    out = extract_lora(tmp_path / "tuned.safetensors", base, tmp_path / "x.safetensors", RankTarget(rank=2),
                       fmt="peft").output
    fused = _diffusers_fused(out)
    te1 = next(k for k in fused["text_encoder"] if k.endswith("encoder.layers.0.self_attn.q_proj.weight"))
    expected = {"unet": {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": tensors[UNET_KEY]},
                "text_encoder": {te1: tensors[TE1_KEY]}}  # transformers 5 drops text_model.
    _assert_fused(fused, expected)


def _comfy_target(name: str, family: str, own: dict[str, dict[str, torch.Tensor]]) -> tuple[str, str]:
    """(component, own key) a ComfyUI-style loader patches for a module name, by ComfyUI's rule: the
    name must be one of the model's own weights (`diffusion_model.<LDM name>`, `text_encoders.clip_*.
    transformer.text_model.…`), here read off the models' state dicts."""
    if name.startswith("diffusion_model."):  # to_ldm: checked against diffusers' converter in test_to_single
        up_attn = up_levels_with_attention({k.rpartition(".")[0] for k in own["unet"]})
        ldm = {f"diffusion_model.{to_ldm(k.rpartition('.')[0], up_attn)}.weight": k for k in own["unet"] if k.endswith(".weight")}
        return "unet", ldm[f"{name}.weight"]
    clip, _, rest = name.removeprefix("text_encoders.").partition(".transformer.")
    component = {"clip_l": "text_encoder", "clip_h": "text_encoder", "clip_g": "text_encoder_2"}[clip]
    assert clip == {"sd1": "clip_l", "sd2": "clip_h", "sdxl": "clip_l" if component == "text_encoder" else "clip_g"}[family]
    keys = {(k if k.startswith("text_model.") else f"text_model.{k}"): k for k in own[component]}
    return component, keys[f"{rest}.weight"]


@pytest.mark.parametrize(("family", "fmt"), [("sd1", "comfyui"), ("sd2", "bfl"), ("sdxl", "comfyui")])
def test_peft_sd_lora_converts_to_names_comfyui_maps(tmp_path: Path, family: str, fmt: str) -> None:
    """diffusers' own PEFT file (transformers-5 CLIP names) as ComfyUI/BFL keys: each key names a
    weight of the model, and patching those weights gives what PEFT's merge gave."""
    lora = write_diffusers_lora(family, tmp_path / "p.safetensors", seed=4)
    out = convert_lora(lora.path, tmp_path / "c.safetensors", fmt).output
    tensors = load_file(str(out))
    parts = ("lora_down.weight", "lora_up.weight") if fmt == "comfyui" else ("lora_A.weight", "lora_B.weight")
    got = {c: {k: v.clone() for k, v in m.state_dict().items()} for c, m in lora.base().items()}
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rpartition(".")[0] for k in tensors}
    for name in names:
        down, up = tensors[f"{name}.{parts[0]}"].float(), tensors[f"{name}.{parts[1]}"].float()
        alpha = tensors.get(f"{name}.alpha")
        scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
        component, key = _comfy_target(name, family, got)
        w = got[component][key]
        got[component][key] = w + scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    assert any(n.startswith("diffusion_model.input_blocks.") for n in names)
    for component, state in lora.merged.items():
        for key, tensor in state.items():
            torch.testing.assert_close(got[component][key], tensor, rtol=1e-5, atol=1e-6, msg=f"{component}.{key}")


def test_a_unet_module_with_no_ldm_name_is_refused_for_comfyui(tmp_path: Path) -> None:
    tensors = load_file(str(write_kohya_lora("sd1", tmp_path / "k.safetensors").path))
    tensors |= {"lora_unet_down_blocks_0_strange_0.lora_down.weight": torch.ones(2, 8),
                "lora_unet_down_blocks_0_strange_0.lora_up.weight": torch.ones(8, 2)}
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ToolError, match="down_blocks_0_strange_0"):
        convert_lora(tmp_path / "odd.safetensors", tmp_path / "c.safetensors", "comfyui")
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("rank", [None, 8])
def test_merging_sgm_and_diffusers_named_sdxl_loras_gives_one_module_per_weight(tmp_path: Path, rank: int | None) -> None:
    sgm, merged_a = _sgm_file(tmp_path)
    peft = write_diffusers_lora("sdxl", tmp_path / "p.safetensors", seed=4)
    target = None if rank is None else RankTarget(rank=rank)
    out = merge_loras([sgm, peft.path], [0.5, 0.5], tmp_path / "m.safetensors", target=target).output
    lora = read_lora(out)
    unet = [m for m in lora.modules.values() if m.component == "unet"]
    assert len(unet) == sum(1 for m in read_lora(peft.path).modules.values() if m.component == "unet")
    assert all(m.path.startswith(("input_blocks_", "middle_block_", "output_blocks_")) for m in unet)  # the first's
    assert {m.rank for m in unet} == {8}  # rank 4 + rank 4, never one input's module cut alone
    base = {c: m.state_dict() for c, m in peft.base().items()}
    expected = {c: {k: base[c][k] + 0.5 * (merged_a[c][k] - base[c][k]) + 0.5 * (peft.merged[c][k] - base[c][k])
                    for k in base[c]} for c in base}
    _assert_fused(_diffusers_fused(out), expected)


def test_extract_as_peft_refuses_an_unnamed_module_before_any_svd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base.safetensors"
    write_single_file(a1111_models("sdxl"), "sdxl", base)
    tensors, meta = load_tensors(base)
    odd = "model.diffusion_model.input_blocks.4.7.proj_in.weight"  # no diffusers counterpart
    tensors[odd] = torch.zeros(8, 8)
    save_file(tensors, str(base), metadata=meta)
    tensors[odd] = torch.ones(8, 8)
    tensors[UNET_KEY] = tensors[UNET_KEY] + 0.05
    save_file(tensors, str(tmp_path / "tuned.safetensors"), metadata=meta)

    def no_svd(*args: object, **kwargs: object) -> None:
        raise AssertionError("an SVD ran before the names were checked")

    monkeypatch.setattr("loraprompt.tools.extract.factorise", no_svd)
    with pytest.raises(ToolError, match="input_blocks_4_7_proj_in"):
        extract_lora(tmp_path / "tuned.safetensors", base, tmp_path / "x.safetensors", RankTarget(rank=2), fmt="peft")
