"""loraprompt.activate on a real (tiny) diffusers StableDiffusionPipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import loraprompt
from loraprompt.errors import AdapterFileError
from loraprompt.integrations.diffusers import patcher_for
from loraprompt.library import Library
from tests.integrations.tiny_pipeline import generate, tiny_pipeline, write_kohya_lora
from tests.patcher.helpers import assert_bit_equal, snapshot


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    pipe = tiny_pipeline(folder)
    loras = folder / "Lora"
    loras.mkdir()
    components = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    write_kohya_lora(loras / "style.safetensors", components, seed=1)
    write_kohya_lora(loras / "other.safetensors", components, seed=2)
    library = Library(loras, persist=False, settle_s=0)
    return pipe, library, generate(pipe, "a cat")


def components(pipe):
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder}


def test_image_without_lora_equals_the_image_before_any_lora(setup) -> None:
    pipe, library, before = setup
    weights = snapshot(components(pipe))
    with loraprompt.activate(pipe, "a cat <lora:style:0.8>", library=library) as prompt:
        assert prompt == "a cat " and not prompt.diagnostics
        with_lora = generate(pipe, prompt)
    assert not np.allclose(with_lora, before, atol=1e-3)
    assert_bit_equal(components(pipe), weights)
    assert np.array_equal(generate(pipe, "a cat"), before)
    with loraprompt.activate(pipe, "a cat", library=library) as prompt:
        assert np.array_equal(generate(pipe, prompt), before)


def test_same_lora_gives_the_same_image_and_a_folder_library_works(setup, tmp_path) -> None:
    pipe, library, _ = setup
    with loraprompt.activate(pipe, "a cat <lora:style:0.8>", library=library) as prompt:
        first = generate(pipe, prompt)
    with loraprompt.activate(pipe, "a cat <lora:other:1> <lora:style:0.8>", library=library) as prompt:
        both = generate(pipe, prompt)
    mapping = {"style": str(Path(library.roots[0]) / "style.safetensors")}
    with loraprompt.activate(pipe, "a cat <lora:style:0.8>", library=mapping) as prompt:
        assert np.array_equal(generate(pipe, prompt), first)
    assert not np.allclose(both, first, atol=1e-3)


def test_an_unknown_name_is_a_diagnostic_and_changes_nothing(setup) -> None:
    pipe, library, before = setup
    with loraprompt.activate(pipe, "a cat <lora:nosuchthing:1>", library=library) as prompt:
        assert [d.severity for d in prompt.diagnostics] == ["error"]
        assert "nosuchthing" in str(prompt.diagnostics[0])
        assert np.array_equal(generate(pipe, prompt), before)


def test_library_diagnostics_point_at_their_tag(setup) -> None:
    pipe, library, _ = setup
    text = "a cat <lora:style:0.5>, <lora:nosuchthing:1> <lora:other:1:hash=deadbeef0000>"
    with loraprompt.activate(pipe, text, library=library) as prompt:
        by_code = {d.code: d for d in prompt.diagnostics}
        missing, mismatch = by_code["E-NAME-NOTFOUND"], by_code["W-HASH-MISMATCH"]
        assert text[missing.span[0]:missing.span[1]] == "<lora:nosuchthing:1>"
        assert text[mismatch.span[0]:mismatch.span[1]] == "<lora:other:1:hash=deadbeef0000>"
        assert f"at {missing.span[0]}-{missing.span[1]}" in str(missing)


def test_a_broken_file_raises_or_is_skipped(setup, tmp_path) -> None:
    pipe, library, before = setup
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    mapping = {"broken": str(broken), "style": str(Path(library.roots[0]) / "style.safetensors")}
    with pytest.raises(AdapterFileError, match=r"broken\.safetensors"), loraprompt.activate(
        pipe, "<lora:broken:1>", library=mapping
    ):
        pass
    with loraprompt.activate(pipe, "a cat <lora:broken:1> <lora:style:0.8>", library=mapping,
                             on_error="skip") as prompt:
        assert [d.code for d in prompt.diagnostics] == ["E-ADAPTER-FILE"]
        assert len(prompt.entries) == 1
    assert np.array_equal(generate(pipe, "a cat"), before)


@pytest.mark.parametrize("schedules", ["fused", "unfused"])
def test_stop_schedule_removes_the_lora_from_the_unet_after_its_step(setup, schedules) -> None:
    pipe, library, before = setup
    with loraprompt.activate(pipe, "a cat <lora:style:0:1:stop=1>", library=library, steps=3,
                             schedules=schedules) as prompt:
        gated = generate(pipe, prompt)
        if schedules == "fused":
            # te=0: only UNet weights are patched. Step 0 is as applied on entry, step 1 takes the
            # LoRA off the UNet, step 2 changes nothing
            assert [r.written for r in prompt.steps] == [0, prompt.report.patched, 0]
        else:  # no weight is written at all: the LoRA runs in the forward of its modules, then stops
            assert prompt.report.patched == 0 and [r.written for r in prompt.steps] == [0, 0, 0]
            assert prompt.report.unfused > 0 and all(r.unfused == prompt.report.unfused for r in prompt.steps)
        # a second generation in the same block starts the schedule again
        assert np.array_equal(generate(pipe, prompt), gated)
        if schedules == "fused":
            assert [r.written for r in prompt.steps[3:]] == [prompt.report.patched, prompt.report.patched, 0]
    with loraprompt.activate(pipe, "a cat <lora:style:0:1>", library=library) as prompt:
        always = generate(pipe, prompt)
    # the same LoRA on step 0 only: neither the plain image nor the LoRA on every step
    assert not np.allclose(gated, before, atol=1e-4)
    assert not np.allclose(gated, always, atol=1e-4)
    # reproduce it by hand: LoRA fused into the UNet for the first denoising step, base for the rest
    patcher = patcher_for(pipe)
    adapter = loraprompt.read_adapter(Path(library.roots[0]) / "style.safetensors")
    calls = {"n": 0}

    def by_hand(module, args, kwargs):
        patcher.sync([(adapter, 0.0, 1.0)] if calls["n"] == 0 else [])
        calls["n"] += 1

    handle = pipe.unet.register_forward_pre_hook(by_hand, with_kwargs=True)
    try:
        manual = generate(pipe, "a cat ")
    finally:
        handle.remove()
        patcher.restore()
    if schedules == "fused":
        assert np.array_equal(gated, manual)
    else:  # the tolerance loraprompt.unfused states for float32, on 8-bit images
        assert np.abs(gated.astype(int) - manual.astype(int)).max() <= 1


def test_a_replaced_unet_is_restored_and_forgotten(setup, tmp_path) -> None:
    pipe = tiny_pipeline(tmp_path)
    library = setup[1]
    patcher = patcher_for(pipe)
    original_unet = pipe.unet
    weights = snapshot({"unet": original_unet})
    patcher.sync([(loraprompt.read_adapter(Path(library.roots[0]) / "style.safetensors"), 1.0, 1.0)])
    pipe.unet = tiny_pipeline(tmp_path, seed=3).unet
    assert patcher_for(pipe) is patcher and patcher.components["unet"] is pipe.unet
    assert patcher.applied == {}
    assert_bit_equal({"unet": original_unet}, weights)
    with torch.no_grad(), loraprompt.activate(pipe, "<lora:style:1>", library=library):
        assert patcher.applied


def test_block_weights_follow_lbw(setup) -> None:
    pipe, library, before = setup
    zeros = ",".join(["1"] + ["0"] * 16)  # BASE (text encoder) 1, every UNet block 0
    with loraprompt.activate(pipe, f"a cat <lora:style:1:lbw={zeros}>", library=library) as prompt:
        assert not [d for d in prompt.diagnostics if d.severity == "error"]
        te_only = generate(pipe, prompt)
    with loraprompt.activate(pipe, "a cat <lora:style:1:0>", library=library) as prompt:
        assert np.array_equal(generate(pipe, prompt), te_only)
    assert not np.array_equal(te_only, before)


class ComponentsOnly:
    """What activate reads from a pipeline: its unet and text encoders."""

    def __init__(self, models) -> None:
        for name, module in models.items():
            setattr(self, name, module)


def test_sdxl_components_are_all_patched_and_restored(tmp_path) -> None:
    from tests.fixtures.loras import write_kohya_lora as tool_kohya
    from tests.fixtures.models import tiny_sdxl

    made = tool_kohya("sdxl", tmp_path / "xl.safetensors", strength=0.5)
    models = tiny_sdxl()
    pipe = ComponentsOnly(models)
    original = snapshot(models)
    with loraprompt.activate(pipe, "<lora:xl:0.5>", library={"xl": str(made.path)}) as prompt:
        assert prompt == "" and not prompt.diagnostics
        for component, state in made.merged.items():
            now = models[component].state_dict()
            for key, expected in state.items():
                torch.testing.assert_close(now[key], expected, rtol=1e-5, atol=1e-5)
        assert {k[0] for k in patcher_for(pipe).applied} == {"unet", "text_encoder", "text_encoder_2"}
    assert_bit_equal(models, original)


def test_the_library_per_folder_memo_is_a_small_lru(tmp_path) -> None:
    import os

    from loraprompt.integrations import diffusers as integration

    folders = [tmp_path / f"lib{i}" for i in range(integration._LIBRARY_LIMIT + 5)]
    for folder in folders:
        folder.mkdir()
    first = integration._library(folders[0])
    for folder in folders[1:]:
        assert integration._library(str(folder)) is integration._library(folder)  # a hit is the same Library
        assert integration._library(folders[0]) is first  # recently used: kept
        assert len(integration._LIBRARIES) <= integration._LIBRARY_LIMIT
    assert (os.path.abspath(folders[1]),) not in integration._LIBRARIES  # least recently used: evicted


def test_concurrent_first_activations_share_one_patcher(setup, tmp_path) -> None:
    """activate() promises that concurrent generations on one pipeline never see each other's
    LoRAs: its Patcher's lock is held for the block. Threads entering it at once on a pipeline
    with no Patcher yet each made their own Patcher (one lock each), so the LoRA was applied on
    top of itself and the weights were not restored. Now they share one, and every block sees the
    LoRA once."""
    import threading

    _, library, _ = setup
    name = "unet:down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    for folder in ("ref", "t0", "t1", "t2", "t3"):
        (tmp_path / folder).mkdir()
    reference = tiny_pipeline(tmp_path / "ref")
    with loraprompt.activate(reference, "a cat <lora:style:1>", library=library):
        once = snapshot(components(reference))[name]
    for trial in range(4):
        pipe = tiny_pipeline(tmp_path / f"t{trial}")  # no Patcher yet
        original = snapshot(components(pipe))
        barrier, seen = threading.Barrier(4), []

        def run(pipe=pipe, barrier=barrier, seen=seen) -> None:
            barrier.wait()
            with loraprompt.activate(pipe, "a cat <lora:style:1>", library=library):
                seen.append(snapshot(components(pipe))[name])

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 4 and all(torch.equal(w, once) for w in seen)
        assert_bit_equal(components(pipe), original)


def test_an_unknown_on_error_is_refused_before_anything_is_applied(setup) -> None:
    """on_error="ignore" (or "Skip") was taken as "raise" without a word: the caller believed bad
    LoRAs would be skipped, and the first one raised."""
    pipe, library, _ = setup
    weights = snapshot(components(pipe))
    with pytest.raises(ValueError, match=r"on_error must be 'raise' or 'skip', not 'ignore'"):
        with loraprompt.activate(pipe, "a cat <lora:style:1>", library=library, on_error="ignore"):
            pass
    assert_bit_equal(components(pipe), weights)


def test_pipelines_built_from_one_set_of_components_share_a_patcher(setup, tmp_path) -> None:
    """diffusers' own idiom, `StableDiffusionImg2ImgPipeline(**pipe.components)` (or from_pipe),
    makes a second pipeline on the same UNet. Each had its own Patcher: with restore=False the
    LoRA was applied once per pipeline on top of the other, and restoring did not give the model
    back. They now share one, so the LoRA is applied once and one restore gives the original."""
    from diffusers import StableDiffusionImg2ImgPipeline

    library = setup[1]
    pipe = tiny_pipeline(tmp_path)
    original = snapshot(components(pipe))
    other = StableDiffusionImg2ImgPipeline(**pipe.components)
    with loraprompt.activate(pipe, "a cat <lora:style:1>", library=library, restore=False):
        once = snapshot(components(pipe))
    with loraprompt.activate(other, "a cat <lora:style:1>", library=library, restore=False):
        assert_bit_equal(components(pipe), once)
    assert patcher_for(other) is patcher_for(pipe)
    with loraprompt.activate(other, "a cat <lora:other:0.5>", library=library, restore=False):
        pass
    patcher_for(pipe).restore()
    assert_bit_equal(components(pipe), original)


def test_activate_on_a_pipeline_with_sequential_cpu_offload(setup, tmp_path) -> None:
    """`enable_sequential_cpu_offload()` (diffusers' lowest-VRAM mode) runs accelerate's
    `cpu_offload` on each model: every module holds a meta placeholder between forwards. The LoRA
    applied nowhere and nothing said so. diffusers refuses that mode without a GPU, so its own call
    is made here with the CPU as the execution device; the image must be the one the same prompt
    gives without offload, and the image after the block the plain one."""
    from accelerate import cpu_offload

    pipe, library, before = setup
    with loraprompt.activate(pipe, "a cat <lora:style:0.8> <lora:other:0.5:1>", library=library) as prompt:
        expected = generate(pipe, prompt)
    offloaded = tiny_pipeline(tmp_path)
    for name in ("unet", "text_encoder", "vae"):
        cpu_offload(getattr(offloaded, name), execution_device=torch.device("cpu"))
    assert offloaded.unet.conv_in.weight.is_meta
    with loraprompt.activate(offloaded, "a cat <lora:style:0.8> <lora:other:0.5:1>", library=library) as prompt:
        assert not prompt.diagnostics and prompt.report.patched > 0
        assert np.array_equal(generate(offloaded, prompt), expected)
    assert np.array_equal(generate(offloaded, "a cat"), before)
