"""The glue inside the fake A1111: tags patch the tiny LDM-named model, an untagged prompt restores
it bit-exactly, a model reload forgets, hires and batches follow A1111's rules."""

from __future__ import annotations

import importlib

import torch

from .conftest import SD1_MODULES, Webui, expected_delta
from .ldm import changed, snapshot

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def applied_weight(webui: Webui, key: str) -> torch.Tensor:
    """The weight a Linear's forward applies: fused LoRAs plus scheduled ones running unfused in
    its forward hook (x = identity, so the output is the effective weight, transposed)."""
    module = webui.sd_model.get_submodule(SD1_MODULES[key][0])
    with torch.no_grad():
        out = module(torch.eye(module.in_features, dtype=module.weight.dtype))
    return (out - module.bias if module.bias is not None else out).T


def started(webui: Webui) -> Webui:
    webui.write_lora("style", seed=1)
    webui.write_lora("detail", seed=2)
    webui.load_extension()
    webui.start()
    return webui


def test_tag_patches_every_module_at_its_strength(webui: Webui) -> None:
    started(webui)
    base = {k: webui.weight(k) for k in SD1_MODULES}
    webui.generate("a cat <lora:style:0.5:0.25>")
    for key in SD1_MODULES:
        strength = 0.5 if key.startswith("lora_te") else 0.25
        want = base[key] + strength * expected_delta(webui.files["style"], key)
        assert torch.allclose(webui.weight(key), want, atol=1e-6), key


def test_prompt_without_tags_restores_bit_exactly(webui: Webui) -> None:
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:1> <lora:detail:0.7>")
    assert changed(webui.sd_model, before)
    webui.generate("<lora:detail:-0.3>")
    webui.generate("just a cat")
    assert changed(webui.sd_model, before) == []


def test_lyco_alias_and_duplicates_follow_a1111(webui: Webui) -> None:
    started(webui)
    base = webui.weight(Q)
    webui.generate("<lyco:style:0.4> <lora:style:0.4>")
    want = base + 0.8 * expected_delta(webui.files["style"], Q)
    assert torch.allclose(webui.weight(Q), want, atol=1e-6)


def test_a_vae_change_keeps_the_backups_so_the_lora_still_comes_off(webui: Webui) -> None:
    """A1111's reload_vae_weights sends the model to the CPU and back and calls model_loaded_callback
    with the UNet and text encoders untouched (also on a request's sd_vae override, and on a switch
    to a model kept in memory). The extension dropped every backup there, so the LoRA of the last
    image stayed in the weights for good, and the next tag added it twice."""
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:1>")
    # reload_vae_weights sends the model to the CPU and back: _apply swaps every tensor (here, on a
    # CPU-only machine, through a lossless float64 round trip)
    webui.sd_model.to(torch.float64).to(torch.float32)
    webui.modules.script_callbacks.model_loaded_callback(webui.sd_model)
    webui.generate("just a cat")
    assert changed(webui.sd_model, before) == []
    webui.generate("<lora:style:1>")
    want = before[SD1_MODULES[Q][0] + ".weight"] + expected_delta(webui.files["style"], Q)
    assert torch.allclose(webui.weight(Q), want, atol=1e-6)  # once, not twice


def test_model_reload_forgets_backups_instead_of_restoring_them(webui: Webui) -> None:
    started(webui)
    webui.generate("<lora:style:1>")
    fresh = type(webui.sd_model)(seed=7).state_dict()
    webui.sd_model.load_state_dict(fresh)  # A1111 loads another checkpoint into the same object
    webui.modules.script_callbacks.model_loaded_callback(webui.sd_model)
    webui.generate("no tags")
    assert changed(webui.sd_model, fresh) == []
    webui.generate("<lora:detail:1>")
    want = fresh[SD1_MODULES[Q][0] + ".weight"] + expected_delta(webui.files["detail"], Q)
    assert torch.allclose(webui.weight(Q), want, atol=1e-6)


def test_hires_pass_uses_its_own_prompt_and_hr_strengths(webui: Webui) -> None:
    started(webui)
    base = webui.weight(Q)
    seen: list[torch.Tensor] = []
    webui.modules.script_callbacks.on_cfg_denoiser(lambda params: seen.append(webui.weight(Q)))
    result = webui.generate("<lora:style:1:1:hr=0.5>", enable_hr=True, steps=2, hr_second_pass_steps=2)
    delta = expected_delta(webui.files["style"], Q)
    assert torch.allclose(seen[0], base + delta, atol=1e-6)
    assert torch.allclose(seen[-1], base + 0.5 * delta, atol=1e-6)
    assert "Lora hashes" in result.extra_generation_params
    webui.generate("<lora:style:1>", enable_hr=True, hr_prompt="<lora:detail:1>", steps=1)
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["detail"], Q), atol=1e-6)


def test_batch_uses_first_prompt_and_says_so(webui: Webui) -> None:
    started(webui)
    base = webui.weight(Q)
    result = webui.generate("", batch_size=2, all_prompts=["<lora:style:1>", "<lora:detail:1>"])
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["style"], Q), atol=1e-6)
    assert "W-BATCH-DIVERGENT" in result.extra_generation_params["loraprompt"]
    assert "first prompt's LoRAs" in result.comments


def test_step_schedule_changes_unet_strength_per_step(webui: Webui) -> None:
    started(webui)
    base = webui.weight(Q)
    te_base = webui.weight(TE_Q)
    seen: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    webui.modules.script_callbacks.on_cfg_denoiser(lambda params: seen.append(applied_weight(webui, Q)))
    webui.modules.script_callbacks.on_cfg_denoiser(lambda params: weights.append(webui.weight(Q)))
    webui.generate("<lora:style:1:unet=0@0,1@4>", steps=5)
    delta = expected_delta(webui.files["style"], Q)
    got = [float(((w - base) * delta).sum() / (delta * delta).sum()) for w in seen]
    assert [round(x, 4) for x in got] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the schedule runs unfused: its strength changes in the forward, the weight is never rewritten
    assert all(torch.equal(w, base) for w in weights)
    assert torch.allclose(webui.weight(TE_Q), te_base + expected_delta(webui.files["style"], TE_Q), atol=1e-6)


def test_disable_extra_networks_restores(webui: Webui) -> None:
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:1>")
    webui.generate("<lora:style:1>", disable_extra_networks=True)
    assert changed(webui.sd_model, before) == []


def test_lowvram_hires_conds_activation_uses_hires_strengths(webui: Webui) -> None:
    started(webui)
    base = webui.weight(TE_Q)
    processing = importlib.import_module("modules.processing")
    extra_networks = importlib.import_module("modules.extra_networks")
    p = processing.StableDiffusionProcessing(sd_model=webui.sd_model, prompt="", scripts=webui.runner)
    p.prompts, p.extra_network_data = extra_networks.parse_prompts(["<lora:style:1:hrte=0.25>"])
    p.hr_prompts, p.hr_extra_network_data = extra_networks.parse_prompts(["<lora:style:1:hrte=0.25>"])
    p.seeds = p.subseeds = [0]
    extra_networks.activate(p, p.hr_extra_network_data)  # A1111's lowvram path: is_hr_pass still False
    want = base + 0.25 * expected_delta(webui.files["style"], TE_Q)
    assert torch.allclose(webui.weight(TE_Q), want, atol=1e-6)
    extra_networks.activate(p, p.extra_network_data)
    assert torch.allclose(webui.weight(TE_Q), base + expected_delta(webui.files["style"], TE_Q), atol=1e-6)


def test_block_weights_and_start_stop_reach_the_right_modules(webui: Webui) -> None:
    started(webui)
    mid = "lora_unet_mid_block_attentions_0_proj_out"
    base = {k: webui.weight(k) for k in (Q, mid, TE_Q)}
    lbw = "0.5,0,1,1,1,1,1,2,1,1,1,1,1,1,1,1,1"  # BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03..OUT11
    webui.generate(f"<lora:style:1:lbw={lbw}>")
    delta = {k: expected_delta(webui.files["style"], k) for k in base}
    assert torch.equal(webui.weight(Q), base[Q])
    assert torch.allclose(webui.weight(mid), base[mid] + 2 * delta[mid], atol=1e-6)
    assert torch.allclose(webui.weight(TE_Q), base[TE_Q] + 0.5 * delta[TE_Q], atol=1e-6)
    seen: list[bool] = []
    webui.modules.script_callbacks.on_cfg_denoiser(
        lambda params: seen.append(not torch.equal(applied_weight(webui, Q), base[Q]))
    )
    webui.generate("<lora:style:1:start=1:stop=3>", steps=4)
    assert seen == [False, True, True, False]


def test_half_precision_model_patches_and_restores_bit_exactly(webui: Webui) -> None:
    webui.sd_model.half()  # A1111 keeps the UNet and text encoder in fp16 on GPU
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:0.7>")
    want = before[SD1_MODULES[Q][0] + ".weight"].float() + 0.7 * expected_delta(webui.files["style"], Q)
    assert webui.weight(Q).dtype == torch.float16
    assert torch.allclose(webui.weight(Q).float(), want, atol=2e-3)
    webui.generate("<lora:detail:1> <lora:style:0.2>")
    webui.generate("")
    assert changed(webui.sd_model, before) == []


def test_no_hashing_reads_no_file_for_its_hash_as_a1111(webui: Webui) -> None:
    """A1111's --no-hashing: a LoRA's hash is used where known, never computed (hashes.sha256),
    so `Lora hashes` leaves out a LoRA not hashed before. The extension hashed every LoRA it applied
    (reading the file in full) and wrote its hash."""
    started(webui)
    opts = webui.modules.shared.cmd_opts
    opts.no_hashing = True
    try:
        result = webui.generate("<lora:style:1>")
        assert "style" not in str(result.extra_generation_params.get("Lora hashes", ""))
    finally:
        opts.no_hashing = False
    assert "style: " in webui.generate("<lora:style:1>").extra_generation_params["Lora hashes"]

