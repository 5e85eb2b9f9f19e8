"""The web UI engine on SD3 and Flux.1: tiny pipelines built from config and saved as diffusers
folders (tests/fixtures/dit_pipelines.py) load through `--checkpoint`'s loader, list the
flow-matching samplers, write Forge's infotext, and apply PEFT LoRAs written by diffusers'
`save_lora_weights` to the transformer, restoring it bit-exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loraprompt.infotext import parse_infotext, parse_lora_hashes
from loraprompt.library.hashes import file_hashes
from loraprompt.models.samplers import FLOW_SAMPLERS, SAMPLER_LABELS, make_scheduler
from loraprompt.ui.txt2img import Txt2Img, Txt2ImgRequest
from tests.fixtures.dit import write_peft
from tests.fixtures.dit_pipelines import save_dit_pipeline

FAMILIES = ("sd3", "flux")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models: thread start-up costs more than the matmuls (10x on this shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Diffusers folders of tiny SD3, Flux-dev-like and Flux-schnell-like pipelines, and a LoRA
    folder with a PEFT LoRA for each family."""
    root = tmp_path_factory.mktemp("dit-models")
    out = {f: save_dit_pipeline(f, root / "checkpoints" / f"tiny-{f}") for f in FAMILIES}
    out["schnell"] = save_dit_pipeline("flux", root / "checkpoints" / "tiny-schnell", guidance=False)
    out["loras"] = root / "Lora"
    for family in FAMILIES:
        write_peft(family, out["loras"] / f"{family}_style.safetensors")
    return out


_ENGINES: dict[str, Any] = {}


def engine(folders: dict[str, Path], name: str, tmp: Path) -> Txt2Img:
    """A Txt2Img on the saved folder `name` (loaded once per module; outputs under `tmp`)."""
    import loraprompt
    from loraprompt.models import load_model

    if name not in _ENGINES:
        model = load_model(folders[name])
        _ENGINES[name] = Txt2Img(model, loraprompt.Library([str(folders["loras"])], cache_dir=str(tmp / "cache")), tmp)
    found = _ENGINES[name]
    found.outputs_dir = tmp
    return found


def small(prompt: str, **kw: Any) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt, **{"steps": 2, "width": 64, "height": 64, "seed": 5, "cfg_scale": 4.0, **kw})


def pixels(result: Any) -> np.ndarray:
    return np.asarray(result.image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_with_its_family_and_the_flow_samplers(folders: dict[str, Path], family: str, tmp_path: Path) -> None:
    eng = engine(folders, family, tmp_path)
    assert eng.model.family == family and eng.model.name == f"tiny-{family}"
    labels = [s.label for s in eng.samplers]
    assert labels[0] == "Euler Simple" and not set(labels) & set(SAMPLER_LABELS)
    # the Flux pipeline hands explicit sigmas to the scheduler: diffusers' flow Heun cannot take them
    assert ("Heun Simple" in labels) == (family == "sd3")
    assert {s.name for s in eng.samplers} >= {"Euler", "DPM++ 2M", "UniPC"}


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_lora_changes_the_image_and_restore_is_exact(folders: dict[str, Path], family: str, tmp_path: Path) -> None:
    eng = engine(folders, family, tmp_path)
    transformer = eng.model.pipe.transformer
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    plain = eng.generate(small("a red fox"))
    lora = folders["loras"] / f"{family}_style.safetensors"
    styled = eng.generate(small(f"a red fox <lora:{family}_style:0.8>"))
    # while the tag is in the prompt the transformer holds the LoRA; removing it restores every tensor
    assert any(not torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    again = eng.generate(small("a red fox"))

    assert np.abs(pixels(styled) - pixels(plain)).max() > 20
    assert np.array_equal(pixels(again), pixels(plain))
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())
    assert [(a.name, a.unet) for a in styled.applied] == [(f"{family}_style", 0.8)]
    fields = parse_infotext(styled.infotext)
    assert parse_lora_hashes(fields["Lora hashes"]) == {f"{family}_style": file_hashes(lora)["a1111_short"]}
    assert not [d for d in styled.diagnostics if d.severity == "error"]


def test_sd3_infotext_is_forges(folders: dict[str, Path], tmp_path: Path) -> None:
    eng = engine(folders, "sd3", tmp_path)
    result = eng.generate(small("a fox", sampler="DPM++ 2M Simple", shift=2.5))
    line = result.infotext.splitlines()[-1]
    assert line.startswith("Steps: 2, Sampler: DPM++ 2M, Schedule type: Simple, CFG scale: 4, Shift: 2.5, Seed: 5, "
                           "Size: 64x64, Model: tiny-sd3")
    assert eng.model.pipe.scheduler.config.flow_shift == 2.5
    default = parse_infotext(eng.generate(small("a fox")).infotext)
    assert default["Shift"] == "3" and "Distilled CFG Scale" not in default


def test_flux_dev_writes_distilled_cfg_and_schnell_does_not(folders: dict[str, Path], tmp_path: Path) -> None:
    dev = engine(folders, "flux", tmp_path).generate(small("a fox", cfg_scale=1.0, distilled_cfg_scale=2.5))
    assert dev.infotext.splitlines()[-1].startswith(
        "Steps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 5")
    schnell = parse_infotext(engine(folders, "schnell", tmp_path).generate(small("a fox", cfg_scale=1.0)).infotext)
    assert "Distilled CFG Scale" not in schnell and "Shift" not in schnell
    # the distilled guidance reaches the transformer: another value, another image
    other = engine(folders, "flux", tmp_path).generate(small("a fox", cfg_scale=1.0, distilled_cfg_scale=9.0))
    assert not np.array_equal(pixels(dev), pixels(other))


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_prompt_is_exactly_diffusers_own_call(folders: dict[str, Path], family: str, tmp_path: Path) -> None:
    eng = engine(folders, family, tmp_path)
    cfg = 4.0
    ours = eng.generate(small("a lighthouse", negative_prompt="blurry", cfg_scale=cfg, sampler="Euler Karras"))
    pipe = eng.model.pipe
    pipe.scheduler = make_scheduler(FLOW_SAMPLERS[1], eng._base_scheduler_config)
    kwargs: dict[str, Any] = {"true_cfg_scale": cfg, "guidance_scale": 3.5} if family == "flux" else {"guidance_scale": cfg}
    reference = pipe("a lighthouse", negative_prompt="blurry", num_inference_steps=2, width=64, height=64,
                     generator=torch.Generator("cpu").manual_seed(5), **kwargs).images[0]
    assert np.array_equal(pixels(ours), np.asarray(reference.convert("RGB"), dtype=np.int16))


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_is_exactly_diffusers_own_img2img_call(folders: dict[str, Path], family: str, tmp_path: Path) -> None:
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    eng = engine(folders, family, tmp_path)
    init = Image.fromarray((np.random.default_rng(3).random((64, 64, 3)) * 255).astype("uint8"))
    request = small("a lighthouse", negative_prompt="blurry", init_image=init, denoising_strength=0.5, steps=4)
    ours = eng.generate(request)
    assert ours.infotext.splitlines()[-1].startswith("Steps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 4, ")
    assert "Denoising strength: 0.5" in ours.infotext
    run = AutoPipelineForImage2Image.from_pipe(eng.model.pipe)
    run.set_progress_bar_config(disable=True)
    run.scheduler = make_scheduler(FLOW_SAMPLERS[0], eng._base_scheduler_config)
    # Flux: the CFG scale is true CFG, the distilled guidance our default 3.5 (the img2img pipeline's is 7)
    kwargs: dict[str, Any] = {"true_cfg_scale": 4.0, "guidance_scale": 3.5} if family == "flux" else {"guidance_scale": 4.0}
    reference = run("a lighthouse", negative_prompt="blurry", image=init, strength=0.5, num_inference_steps=4,
                    width=64, height=64, generator=torch.Generator("cpu").manual_seed(5), **kwargs).images[0]
    assert np.array_equal(pixels(ours), np.asarray(reference.convert("RGB"), dtype=np.int16))
    txt2img = eng.generate(small("a lighthouse", negative_prompt="blurry", steps=4))
    assert not np.array_equal(pixels(ours), pixels(txt2img))  # the init image was used


@pytest.mark.parametrize("family", FAMILIES)
def test_every_offered_sampler_runs_and_pastes_back(folders: dict[str, Path], family: str, tmp_path: Path) -> None:
    from loraprompt.ui.paste import paste_values

    eng = engine(folders, family, tmp_path)
    labels = [s.label for s in eng.samplers]
    seen = []
    for label in labels:
        result = eng.generate(small("a fox", sampler=label, steps=3))
        seen.append(pixels(result))
        assert paste_values(result.infotext, eng.library, labels)[2] == label
    assert len({a.tobytes() for a in seen}) >= len(labels) - 1  # the schedules differ


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_editing_switches_the_text_between_steps(folders: dict[str, Path], family: str, tmp_path: Path) -> None:
    eng = engine(folders, family, tmp_path)
    cat, dog = pixels(eng.generate(small("a cat"))), pixels(eng.generate(small("a dog")))
    edited = pixels(eng.generate(small("a [cat:dog:1]")))
    assert not np.array_equal(edited, cat) and not np.array_equal(edited, dog)
    batch = eng.generate(small("a [cat:dog:1]", batch_size=2))
    # the first of a batch keeps its seed (batched matmuls may round a pixel differently)
    assert np.abs(pixels(batch.images[0]) - edited).max() <= 2 < np.abs(pixels(batch.images[0]) - dog).max()


def test_emphasis_is_reported_as_not_applied(folders: dict[str, Path], tmp_path: Path) -> None:
    eng = engine(folders, "flux", tmp_path)
    result = eng.generate(small("a (red:1.3) fox"))
    assert [d.code for d in result.diagnostics] == ["I-EMPHASIS-IGNORED"]
    assert np.array_equal(pixels(result), pixels(eng.generate(small("a red fox"))))


@pytest.mark.parametrize(("change", "message"), [
    ({"sampler": "Euler a"}, "'Euler a' does not fit the loaded model; choose one of: Euler Simple"),
    ({"clip_skip": 2}, "clip skip is for SD1/SD2/SDXL"),
    ({"init_image": "x.png", "resize_mode": "Just resize (latent upscale)"},
     "the latent resize mode is for SD models; on Flux choose another resize mode"),
    ({"prompt": "a cat AND a dog"}, "AND (composable diffusion) is not supported on Flux models"),
])
def test_what_the_flux_path_does_not_run_is_refused_by_name(folders: dict[str, Path], tmp_path: Path,
                                                           change: dict[str, Any], message: str) -> None:
    from loraprompt.ui.hires import HiresOptions

    eng = engine(folders, "flux", tmp_path)
    with pytest.raises(ValueError, match="the latent hires upscalers are for SD models; on Flux choose Lanczos or Nearest"):
        eng.generate(small("a cat", hires=HiresOptions()))  # A1111's default upscaler, Latent
    prompt = change.pop("prompt", "a cat")
    with pytest.raises(ValueError) as info:
        eng.generate(small(prompt, **change))
    assert message in str(info.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_hires_fix_is_diffusers_txt2img_upscale_then_img2img(folders: dict[str, Path], family: str,
                                                             tmp_path: Path) -> None:
    """The first pass, a Lanczos upscale of the decoded image, then the model's img2img pipeline at
    the new size with the same generator: exactly those diffusers calls, and A1111's hires fields."""
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    from loraprompt.ui.hires import HiresOptions

    eng = engine(folders, family, tmp_path)
    hires = HiresOptions(upscaler="Lanczos", scale=1.5, steps=4, denoising_strength=0.6)
    ours = eng.generate(small("a lighthouse", negative_prompt="blurry", steps=3, hires=hires))
    assert ours.image.size == (96, 96)
    fields = parse_infotext(ours.infotext)
    assert (fields["Hires upscale"], fields["Hires upscaler"], fields["Hires steps"], fields["Denoising strength"]) == \
        ("1.5", "Lanczos", "4", "0.6")
    pipe = eng.model.pipe
    pipe.scheduler = make_scheduler(FLOW_SAMPLERS[0], eng._base_scheduler_config)
    kwargs: dict[str, Any] = {"true_cfg_scale": 4.0, "guidance_scale": 3.5} if family == "flux" else {"guidance_scale": 4.0}
    generator = torch.Generator("cpu").manual_seed(5)
    first = pipe("a lighthouse", negative_prompt="blurry", num_inference_steps=3, width=64, height=64, generator=generator, **kwargs).images[0]
    run = AutoPipelineForImage2Image.from_pipe(pipe)
    run.set_progress_bar_config(disable=True)
    run.scheduler = pipe.scheduler
    reference = run("a lighthouse", negative_prompt="blurry", image=first.resize((96, 96), Image.Resampling.LANCZOS), strength=0.6,
                    num_inference_steps=4, width=96, height=96, generator=generator, **kwargs).images[0]
    assert np.array_equal(pixels(ours), np.asarray(reference.convert("RGB"), dtype=np.int16))


def test_hires_pass_takes_its_own_lora_strength(folders: dict[str, Path], tmp_path: Path) -> None:
    from loraprompt.ui.hires import HiresOptions

    eng = engine(folders, "flux", tmp_path)
    before = {k: v.clone() for k, v in eng.model.pipe.transformer.state_dict().items()}
    hires = HiresOptions(upscaler="Nearest", scale=1.5, steps=2, denoising_strength=0.5)
    plain = eng.generate(small("a fox", hires=hires))
    both = eng.generate(small("a fox <lora:flux_style:0.8>", hires=hires))
    first_only = eng.generate(small("a fox <lora:flux_style:0.8:hr=0>", hires=hires))
    assert len({pixels(r).tobytes() for r in (plain, both, first_only)}) == 3
    assert [(a.name, a.unet) for a in first_only.applied] == [("flux_style", 0.8)]
    eng.generate(small("a fox"))
    assert all(torch.equal(before[k], v) for k, v in eng.model.pipe.transformer.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_scheduled_lora_runs_in_the_forward_as_if_rewritten_each_step(folders: dict[str, Path], family: str,
                                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`start=1`: off at step 0, on after. The web UI's patcher runs it in the transformer's
    forward (no weight rewritten between steps); the same generation with the weights rewritten
    at every step (schedules="fused") gives the same image within float rounding."""
    from loraprompt.integrations import diffusers as integration
    from loraprompt.integrations.diffusers import patcher_for

    eng = engine(folders, family, tmp_path)
    transformer = eng.model.pipe.transformer
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    plain = eng.generate(small("a fox", steps=3))
    constant = eng.generate(small(f"a fox <lora:{family}_style:1>", steps=3))
    prompt = f"a fox <lora:{family}_style:1:start=1>"
    patcher = patcher_for(eng.model.pipe)
    assert patcher.schedules == "unfused"
    reports: list[Any] = []
    real_sync = patcher.sync

    def recorded(*args: Any, **kwargs: Any) -> Any:  # the real sync, its reports kept
        reports.append(real_sync(*args, **kwargs))
        return reports[-1]

    patcher.sync = recorded  # type: ignore[method-assign]
    try:
        unfused = eng.generate(small(prompt, steps=3))
        in_forward, reports[:] = list(reports), []
        real_activate = integration.activate
        monkeypatch.setattr(integration, "activate", lambda *a, **k: real_activate(*a, **{**k, "schedules": "fused"}))
        rewritten = eng.generate(small(prompt, steps=3))
    finally:
        monkeypatch.undo()
        del patcher.sync
    # in the forward: the LoRA's modules hooked from the first sync on and no weight holding it (the
    # first sync only takes the previous prompt's constant LoRA out); nothing written between steps
    assert len(in_forward) > 1 and all(r.patched == 0 and r.unfused > 0 for r in in_forward)
    assert all(r.written == 0 for r in in_forward[1:])
    assert any(r.written > 0 for r in reports)  # rewritten: the weights change when the LoRA starts
    assert len({pixels(r).tobytes() for r in (plain, constant, unfused)}) == 3
    assert np.abs(pixels(unfused) - pixels(rewritten)).max() <= 2
    eng.generate(small("a fox"))
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())


def test_a_lora_of_the_other_family_is_refused_and_the_model_untouched(folders: dict[str, Path], tmp_path: Path) -> None:
    eng = engine(folders, "flux", tmp_path)
    before = {k: v.clone() for k, v in eng.model.pipe.transformer.state_dict().items()}
    plain = eng.generate(small("a fox"))
    result = eng.generate(small("a fox <lora:sd3_style:1>"))
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert errors and "SD3" in errors[0].message and result.applied == []
    assert np.array_equal(pixels(result), pixels(plain))
    assert all(torch.equal(before[k], v) for k, v in eng.model.pipe.transformer.state_dict().items())


def test_gallery_filter_follows_the_loaded_dit_family(folders: dict[str, Path], tmp_path: Path) -> None:
    from loraprompt.library.cards import search

    eng = engine(folders, "flux", tmp_path)
    families = {Path(e.path).stem: e.family for e in eng.library.entries}
    assert families == {"sd3_style": "sd3", "flux_style": "flux"}
    found = search(eng.library, family=eng.model.family)
    assert [Path(e.path).stem for e in found.entries] == ["flux_style"]
    assert found.hidden_families == {"SD3": 1}


def test_single_file_dit_checkpoints_are_refused_with_the_way_out(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from loraprompt.models import load_model
    from loraprompt.models.checkpoint import CheckpointError, scan_checkpoints

    save_file({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(6, 2)},
              str(tmp_path / "sd3_medium.safetensors"))
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)}, str(tmp_path / "flux1-dev.safetensors"))
    for name, label in (("sd3_medium", "SD3"), ("flux1-dev", "Flux.1")):
        with pytest.raises(CheckpointError) as info:
            load_model(tmp_path / f"{name}.safetensors")
        assert f"a single-file {label} checkpoint" in str(info.value) and "diffusers folder" in str(info.value)
    skipped: list[tuple[Path, str]] = []
    assert scan_checkpoints(tmp_path, skipped) == {}
    assert sorted(p.name for p, _ in skipped) == ["flux1-dev.safetensors", "sd3_medium.safetensors"]


def test_checkpoint_switch_changes_the_form_fields(folders: dict[str, Path], tmp_path: Path) -> None:
    from loraprompt.models import load_demo, load_model
    from loraprompt.ui.webui import model_fields
    from tests.ui.conftest import demo_engine

    eng = demo_engine(tmp_path)
    assert model_fields(eng)["sampler"]["choices"] == list(SAMPLER_LABELS)
    assert model_fields(eng)["clip-skip"] == {"maximum": 2, "interactive": True}  # the demo's 2 layers; the value is kept
    eng.switch_model(lambda: load_model(folders["sd3"]), lambda: load_demo(tmp_path)[0])
    fields = model_fields(eng)
    assert fields["sampler"]["choices"][0] == "Euler Simple"
    assert fields["shift"] == {"visible": True, "value": 3.0} and not fields["distilled-cfg"]["visible"]
    assert fields["clip-skip"] == {"maximum": 2, "interactive": False, "value": 1}  # SD3 reads its encoders as trained
    import gradio as gr

    gr.Slider(1, step=1, **fields["clip-skip"])  # gradio takes it (a maximum of 1 is refused)
    assert eng.generate(small("a fox")).infotext.splitlines()[-1].startswith("Steps: 2, Sampler: Euler, Schedule type: Simple")
    eng.switch_model(lambda: load_model(folders["flux"]), lambda: load_model(folders["sd3"]))
    fields = model_fields(eng)
    assert fields["distilled-cfg"]["visible"] and not fields["shift"]["visible"] and fields["cfg"]["value"] == 1.0


def test_training_from_a_dit_folder_is_refused_by_name(folders: dict[str, Path]) -> None:
    from loraprompt.train.errors import TrainError
    from loraprompt.train.model import load_base

    with pytest.raises(TrainError, match=r"a flux model; training runs on SD1\.x, SD2\.x and SDXL"):
        load_base(str(folders["flux"]))
