"""resize, extract and convert on SD3 and Flux.1 LoRAs, in every layout they come in.

References: the PEFT files `save_lora_weights` writes on tiny transformers built from config, the
other layouts produced from the same weights (tests/fixtures/dit.py), diffusers' own
`load_lora_weights` + `fuse_lora` on the tiny pipelines, and a full SVD for the truncations."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraprompt import Patcher, read_adapter
from loraprompt.errors import ToolError
from loraprompt.tools import convert_lora, extract_lora
from loraprompt.tools.lora import read_lora
from loraprompt.tools.resize import resize_lora
from loraprompt.tools.svd import RankTarget
from tests.fixtures import dit

LAYOUTS = [("flux", "peft"), ("flux", "kohya"), ("flux", "comfyui"), ("flux", "bfl"), ("flux", "xlabs"),
           ("sd3", "peft"), ("sd3", "kohya"), ("sd3", "comfyui"), ("sd3", "bfl"),
           ("wan", "peft"), ("wan", "musubi"), ("wan", "comfyui"), ("wan", "bfl"),
           ("flux2", "peft"), ("flux2", "kohya"), ("flux2", "comfyui"), ("flux2", "bfl")]


def _file(lora: dit.PeftLora, tmp_path: Path, layout: str) -> Path:
    return lora.path if layout == "peft" else dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout)


def _patched(family: str, path: Path, strength: float = 1.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    model = dit.tiny_transformer(family, dtype=dtype)
    report = Patcher({"transformer": model}).sync([(read_adapter(path), strength, strength)])
    assert report.diagnostics == []
    return {k: v.clone() for k, v in model.state_dict().items()}


def _diffusers_pipeline_fuse(family: str, path: Path, strength: float = 1.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tiny pipeline's transformer after diffusers' own `load_lora_weights` and `fuse_lora`."""
    import diffusers

    cls = getattr(diffusers, dit.PIPELINES[family])
    parts = {p: None for p in inspect.signature(cls.__init__).parameters if p != "self"}
    pipe = cls(**{**parts, "transformer": dit.tiny_transformer(family, dtype=dtype)})
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=strength)
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in pipe.transformer.state_dict().items() if "lora_" not in k}


def _close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(ours[key].float(), value.float(), rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize(("family", "layout"), LAYOUTS)
def test_resize_to_full_rank_keeps_the_layout_and_every_delta(tmp_path: Path, family: str, layout: str) -> None:
    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    source = _file(lora, tmp_path, layout)
    report = resize_lora(source, tmp_path / "resized.safetensors", RankTarget(rank=64))
    assert report.min_kept == pytest.approx(1.0, abs=1e-5)
    before, after = read_lora(source), read_lora(report.output)
    assert after.format == before.format and after.modules.keys() == before.modules.keys()
    assert load_file(str(report.output)).keys() == load_file(str(source)).keys()  # the same key names, as others read them
    adapter = read_adapter(report.output)
    assert (adapter.family, adapter.format) == (read_adapter(source).family, read_adapter(source).format)
    _close(_patched(family, report.output, 0.8), _patched(family, source, 0.8))


def test_resize_truncates_a_fused_flux_module_optimally_and_splits_it_by_rows(tmp_path: Path) -> None:
    """kohya's `single_blocks.0.linear1` is q/k/v+MLP stacked (rank 4·4 here): resized to rank 2 it
    is the best rank-2 approximation of the whole fused delta, whose rows go to to_q/to_k/to_v/proj_mlp."""
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    source = dit.native_file(lora, tmp_path / "kohya.safetensors", "kohya")
    report = resize_lora(source, tmp_path / "r2.safetensors", RankTarget(rank=2))
    key = "unet/single_blocks_0_linear1"
    original = read_lora(source).modules[key].delta()
    resized = read_lora(report.output).modules[key]
    assert resized.rank == 2
    u, s, vh = torch.linalg.svd(original.double(), full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close(resized.delta().double(), best, rtol=0, atol=1e-5)
    row = next(m for m in report.modules if m.key == key)
    assert (row.old_rank, row.new_rank) == (16, 2)
    assert row.kept == pytest.approx(float(s[:2].norm() / s.norm()), abs=1e-5)
    base, ours = dit.tiny_transformer("flux").state_dict(), _patched("flux", report.output)
    start = 0
    for name in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
        weight = f"single_transformer_blocks.0.{name}.weight"
        rows = base[weight].shape[0]
        torch.testing.assert_close(ours[weight].double(), base[weight].double() + best[start : start + rows], rtol=0, atol=1e-5)
        start += rows
    assert start == original.shape[0]


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_resized_bf16_peft_file_loads_in_diffusers_load_lora_weights(tmp_path: Path, family: str) -> None:
    lora = dit.write_peft(family, tmp_path / "peft.safetensors", dtype=torch.bfloat16)
    report = resize_lora(lora.path, tmp_path / "resized.safetensors", RankTarget(rank=lora.rank))
    assert {t.dtype for t in load_file(str(report.output)).values()} == {torch.bfloat16}
    theirs = _diffusers_pipeline_fuse(family, report.output, 0.7)
    _close(_patched(family, report.output, 0.7), theirs, atol=1e-6)  # diffusers reads it as we do
    _close(theirs, _diffusers_pipeline_fuse(family, lora.path, 0.7), atol=2e-2)  # ≈ the original (bf16 factors)
    smaller = resize_lora(lora.path, tmp_path / "r2.safetensors", RankTarget(rank=2)).output
    _close(_patched(family, smaller, 0.7), _diffusers_pipeline_fuse(family, smaller, 0.7), atol=1e-6)


def _flux_blocks(native: str) -> bool:  # what diffusers' kohya/ComfyUI converter reads on tiny widths
    return native.startswith(("double_blocks.", "single_blocks.")) and not native.endswith(".linear1")


@pytest.mark.parametrize(("layout", "include"), [("xlabs", None), ("comfyui", _flux_blocks), ("kohya", _flux_blocks)])
def test_resized_flux_native_files_read_by_diffusers_converters_as_by_us(tmp_path: Path, layout: str, include: object) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    source = dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout, include=include)
    resized = resize_lora(source, tmp_path / "r.safetensors", RankTarget(rank=3)).output
    theirs = dit.diffusers_fused("flux", resized, 0.9)
    base = dit.tiny_transformer("flux").state_dict()
    assert any(not torch.equal(theirs[k], base[k]) for k in base)
    _close(_patched("flux", resized, 0.9), theirs, atol=1e-6)


def _folder(root: Path, family: str, state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    model = dit.tiny_transformer(family, dtype=dtype)
    if state is not None:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    model.save_pretrained(root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": dit.PIPELINES[family]}))
    return root


@pytest.mark.parametrize("family", ["flux", "sd3", "wan", "flux2"])
def test_extract_from_a_dit_folder_recovers_the_delta_and_loads_in_diffusers(tmp_path: Path, family: str) -> None:
    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    tuned_state = dit.peft_fused(lora)  # base + ΔW, as diffusers fuses it
    base, tuned = _folder(tmp_path / "base", family), _folder(tmp_path / "tuned", family, tuned_state)
    report = extract_lora(tuned, base, tmp_path / "x.safetensors", RankTarget(rank=lora.rank))
    assert report.family == family and len(report.modules) == len(lora.factors)
    assert report.min_kept == pytest.approx(1.0, abs=1e-5)
    keys = load_file(str(report.output)).keys()
    assert keys == {f"transformer.{m}.lora_{p}.weight" for m in lora.factors for p in "AB"}  # PEFT, diffusers' names
    _close(_patched(family, report.output), tuned_state)
    _close(_diffusers_pipeline_fuse(family, report.output), tuned_state)
    kohya = extract_lora(tuned, base, tmp_path / "k.safetensors", RankTarget(rank=lora.rank), fmt="kohya").output
    assert all(k.startswith("lora_transformer_") for k in load_file(str(kohya)))  # OneTrainer's, read by ComfyUI
    _close(_patched(family, kohya), tuned_state)


def test_extract_from_bf16_flux_folders_stays_bf16_within_its_rounding(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    tuned_state = dit.peft_fused(lora)
    base = _folder(tmp_path / "base", "flux", dtype=torch.bfloat16)
    tuned = _folder(tmp_path / "tuned", "flux", tuned_state, dtype=torch.bfloat16)
    report = extract_lora(tuned, base, tmp_path / "x.safetensors", RankTarget(energy=0.999))
    assert {t.dtype for t in load_file(str(report.output)).values()} == {torch.bfloat16}
    ours = _patched("flux", report.output, dtype=torch.bfloat16)
    want = {k: v.to(torch.bfloat16) for k, v in tuned_state.items()}
    for key, value in want.items():  # bf16 keeps ~3 significant digits of weights ~0.1-1
        assert (ours[key].float() - value.float()).abs().max() <= 0.02, key
    # diffusers fuses in bf16 (we sum in float32 and cast once): the same within bf16 rounding
    _close(_diffusers_pipeline_fuse("flux", report.output, dtype=torch.bfloat16), ours, atol=0.02)


def test_convert_between_native_layouts_keeps_the_delta(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    comfy = dit.native_file(lora, tmp_path / "comfy.safetensors", "comfyui")
    kohya = convert_lora(comfy, tmp_path / "kohya.safetensors", "kohya").output
    assert load_file(str(kohya)).keys() == load_file(str(dit.native_file(lora, tmp_path / "k.safetensors", "kohya"))).keys()
    bfl = convert_lora(kohya, tmp_path / "bfl.safetensors", "bfl").output
    assert all(k.startswith("diffusion_model.") and ".lora_" in k for k in load_file(str(bfl)))
    ref = _patched("flux", comfy, 0.6)
    for path in (kohya, bfl):
        _close(_patched("flux", path, 0.6), ref)


def test_native_layouts_refuse_diffusers_named_modules_and_xlabs_other_modules(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    with pytest.raises(ToolError, match=r"transformer/\w+: ComfyUI, BFL and XLabs files name a transformer.s modules natively"):
        convert_lora(lora.path, tmp_path / "c.safetensors", "comfyui")
    kohya = dit.native_file(lora, tmp_path / "kohya.safetensors", "kohya")
    with pytest.raises(ToolError, match=r"XLabs files adapt Flux's double/single block attention only"):
        convert_lora(kohya, tmp_path / "x.safetensors", "xlabs")
    assert not (tmp_path / "c.safetensors").exists() and not (tmp_path / "x.safetensors").exists()


def test_the_cli_offers_every_writer_format() -> None:
    from loraprompt.tools import cli, writer

    assert cli.FORMATS == writer.FORMATS


def _single_file(path: Path, model: torch.nn.Module, prefix: str) -> Path:
    from safetensors.torch import save_file

    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize(("prefix", "dtype"), [("model.diffusion_model.", torch.bfloat16), ("", torch.float8_e4m3fn)])
def test_merge_into_a_native_single_file_flux_equals_the_patcher(tmp_path: Path, prefix: str, dtype: torch.dtype) -> None:
    """ComfyUI's checkpoints (`model.diffusion_model.double_blocks…`) and BFL's bare transformer
    files (`double_blocks…`; here scaled fp8 with `scale_weight`, as ComfyUI's fp8 files) take
    LoRAs in every layout, bit-identical to the patcher on the model loaded under those names."""
    from loraprompt.tools import merge_checkpoint
    from tests.patcher.test_scaled_fp8 import LIMIT

    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    kohya = dit.native_file(lora, tmp_path / "kohya.safetensors", "kohya")

    def loaded() -> torch.nn.Module:
        native, _ = dit.native_model("flux")
        if dtype != torch.float8_e4m3fn:
            return native.to(dtype)
        with torch.no_grad():
            for module in native.modules():
                if isinstance(module, torch.nn.Linear):
                    scale = module.weight.abs().max() / LIMIT
                    module.weight = torch.nn.Parameter((module.weight / scale).to(dtype), requires_grad=False)
                    module.register_parameter("scale_weight", torch.nn.Parameter(scale.float(), requires_grad=False))
        return native

    checkpoint = _single_file(tmp_path / "flux.safetensors", loaded(), prefix)
    report = merge_checkpoint(checkpoint, [(lora.path, 1.0, 0.8), (kohya, 1.0, 0.5)], tmp_path / "merged.safetensors")
    assert report.family == "flux" and report.diagnostics == []
    merged = load_file(str(report.output))
    model = loaded()
    patch = Patcher({"transformer": model}).sync([(read_adapter(lora.path), 1.0, 0.8), (read_adapter(kohya), 1.0, 0.5)])
    assert patch.diagnostics == []
    expected = {prefix + k: v for k, v in model.state_dict().items()}
    assert merged.keys() == expected.keys()
    raw = lambda t: t.view(torch.uint8) if t.element_size() == 1 else t  # noqa: E731
    assert all(torch.equal(raw(merged[k]), raw(v)) for k, v in expected.items())
    base = {prefix + k: v for k, v in loaded().state_dict().items()}
    assert sum(not torch.equal(raw(merged[k]), raw(base[k])) for k in base) >= 20


def test_extract_from_bare_bfl_flux_files_writes_kohya_native_modules(tmp_path: Path) -> None:
    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    tuned_state = dit.peft_fused(lora)
    tuned_model = dit.tiny_transformer("flux")
    tuned_model.load_state_dict(tuned_state)
    base = _single_file(tmp_path / "base.safetensors", dit.native_model("flux")[0], "")
    tuned = _single_file(tmp_path / "tuned.safetensors", dit.native_model("flux", source=tuned_model)[0], "")
    report = extract_lora(tuned, base, tmp_path / "x.safetensors", RankTarget(rank=16))
    assert report.family == "flux" and report.min_kept == pytest.approx(1.0, abs=1e-5)
    keys = load_file(str(report.output)).keys()
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys  # kohya's own Flux names
    assert "lora_unet_single_blocks_1_linear1.lora_up.weight" in keys
    _close(_patched("flux", report.output), tuned_state)  # split by rows onto the diffusers model


def test_extract_from_scaled_fp8_files_uses_their_scales(tmp_path: Path) -> None:
    """At full rank the extracted delta is exactly dequant(tuned) - dequant(base) (fp8 · scale_weight)."""
    from tests.patcher.test_scaled_fp8 import LIMIT

    lora = dit.write_peft("flux", tmp_path / "peft.safetensors")
    tuned_model = dit.tiny_transformer("flux")
    tuned_model.load_state_dict(dit.peft_fused(lora))

    def scaled(source: torch.nn.Module | None) -> tuple[Path, dict[str, torch.Tensor]]:
        native, _ = dit.native_model("flux", source=source)
        real = {}
        with torch.no_grad():
            for name, module in native.named_modules():
                if isinstance(module, torch.nn.Linear):
                    scale = module.weight.abs().max() / LIMIT
                    module.weight = torch.nn.Parameter((module.weight / scale).to(torch.float8_e4m3fn), requires_grad=False)
                    module.register_parameter("scale_weight", torch.nn.Parameter(scale.float(), requires_grad=False))
                    real[name] = module.weight.float() * scale
        tag = "tuned" if source is not None else "base"
        return _single_file(tmp_path / f"{tag}.safetensors", native, "model.diffusion_model."), real

    (base, base_w), (tuned, tuned_w) = scaled(None), scaled(tuned_model)
    report = extract_lora(tuned, base, tmp_path / "x.safetensors", RankTarget(rank=200), dtype="fp32")
    modules = read_lora(report.output).modules
    assert {m.down.dtype for m in modules.values()} == {torch.float32}
    for name in ("double_blocks.0.img_attn.qkv", "single_blocks.1.linear1", "final_layer.adaLN_modulation.1"):
        got = modules[f"unet/{name.replace('.', '_')}"].delta()
        torch.testing.assert_close(got, tuned_w[name] - base_w[name], rtol=0, atol=1e-5)
    default = extract_lora(tuned, base, tmp_path / "d.safetensors", RankTarget(rank=4)).output
    assert {t.dtype for k, t in load_file(str(default)).items() if not k.endswith(".alpha")} == {torch.bfloat16}


@pytest.mark.parametrize(("family", "layout"), [("flux", "kohya"), ("flux", "comfyui"), ("flux", "bfl"), ("flux", "xlabs"),
                                                ("sd3", "kohya"), ("sd3", "comfyui"), ("wan", "musubi"),
                                                ("flux2", "kohya"), ("flux2", "comfyui"), ("flux2", "bfl")])
def test_native_files_convert_to_peft_that_diffusers_loads(tmp_path: Path, family: str, layout: str) -> None:
    """A fused native module becomes its diffusers modules (the same down, its rows of up; adaLN
    halves swapped back): exact, and loadable by diffusers' load_lora_weights on tiny widths, where
    its kohya converter is not (SAI-named SD3 files it does not read at all)."""
    lora = dit.write_peft(family, tmp_path / "peft.safetensors")
    native = dit.native_file(lora, tmp_path / f"{layout}.safetensors", layout)
    peft = convert_lora(native, tmp_path / "converted.safetensors", "peft").output
    keys = load_file(str(peft)).keys()
    assert all(k.startswith("transformer.") for k in keys)
    theirs = _diffusers_pipeline_fuse(family, peft, 0.9)
    _close(_patched(family, peft, 0.9), theirs, atol=1e-6)
    ref = _patched(family, native, 0.9)
    _close(theirs, ref, atol=1e-6)
    if layout != "xlabs":
        _close(theirs, _diffusers_pipeline_fuse(family, lora.path, 0.9), atol=1e-6)  # = the original PEFT file's fuse


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_merging_a_peft_and_a_native_flux_lora_sums_them_exactly(tmp_path: Path, fmt: str) -> None:
    from loraprompt.tools.lora_merge import merge_loras

    first = dit.write_peft("flux", tmp_path / "a.safetensors")
    second = dit.native_file(dit.write_peft("flux", tmp_path / "b.safetensors", seed=5), tmp_path / "b_kohya.safetensors", "kohya")
    merged = merge_loras([first.path, second], [0.6, 0.9], tmp_path / "ab.safetensors", fmt=fmt).output
    model = dit.tiny_transformer("flux")
    Patcher({"transformer": model}).sync([(read_adapter(first.path), 0.6, 0.6), (read_adapter(second), 0.9, 0.9)])
    _close(_patched("flux", merged), model.state_dict())
    if fmt == "peft":
        _close(_diffusers_pipeline_fuse("flux", merged), model.state_dict())
