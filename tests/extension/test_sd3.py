"""An SD3 model in A1111 v1.10.1 (`sd_model.is_sd3`, its `diffusers_weight_mapping`): the built-in
Lora extension applies SD3 LoRAs and loraprompt does not patch A1111's MMDiT, so loraprompt hands
the `lora`/`lyco` tags back to the built-in while one is loaded, says why once, and takes them back
when an SD1/SDXL model is loaded. Without the built-in a tag on SD3 is an error that says what to do."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from .conftest import Webui, expected_delta
from .ldm import TinySD3, changed, snapshot
from .test_generation import Q, started


def load(webui: Webui, model: Any) -> Any:
    """What A1111's sd_models.load_model does for the extensions: the new model in shared, then
    `model_loaded_callback`."""
    webui.sd_model = model
    webui.modules.shared.sd_model = model
    webui.modules.script_callbacks.model_loaded_callback(model)
    return model


def handler(webui: Webui, name: str = "lora") -> Any:
    extra = webui.modules.extra_networks
    return extra.extra_network_registry.get(name) or extra.extra_network_aliases.get(name)


def test_sd3_tags_go_to_the_builtin_and_come_back_for_sd1(webui: Webui, caplog: pytest.LogCaptureFixture) -> None:
    networks = webui.enable_builtin()
    started(webui)
    sd1 = webui.sd_model
    base = webui.weight(Q)
    webui.generate("<lora:style:1>")  # loraprompt patches the SD1 model
    assert handler(webui) is webui.state.network

    caplog.set_level(logging.WARNING, logger="loraprompt")
    sd3 = load(webui, TinySD3())
    sd3_before = snapshot(sd3)
    assert torch.equal(sd1.get_submodule("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q").weight,
                       base)  # what loraprompt applied to the SD1 model is restored when it hands over
    builtin = networks.extra_network_lora
    assert handler(webui) is builtin and handler(webui, "lyco") is builtin
    first = webui.generate("a castle <lora:sd3_style:0.7> <lyco:other:1>")
    second = webui.generate("a castle <lora:sd3_style:0.7>")
    assert builtin.calls[-2:] == [[["sd3_style", "0.7"], ["other", "1"]], [["sd3_style", "0.7"]]]
    assert networks.loaded_networks == ["sd3_style"]
    assert changed(sd3, sd3_before) == []  # loraprompt wrote nothing into the MMDiT
    # said once: in the log when the model loaded, and under the first image
    said = [r.getMessage() for r in caplog.records if "built-in Lora extension applies" in r.getMessage()]
    assert len(said) == 1 and "SD3" in said[0]
    assert "the loaded model is SD3" in first.comments and "SD3" not in second.comments
    assert "loraprompt" not in first.extra_generation_params  # no error: nothing was refused

    load(webui, sd1)  # an SD1 model again: loraprompt takes the tags back
    assert handler(webui) is webui.state.network and handler(webui, "lyco") is webui.state.network
    assert networks.loaded_networks == []  # the built-in's hooks have nothing left to apply
    result = webui.generate("<lora:style:1>")
    assert "only one of them" not in result.comments
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["style"], Q), atol=1e-6)
    assert any("handles <lora:...> tags again" in r.getMessage() for r in caplog.records)


def test_a_model_kept_in_memory_is_followed_at_generation_time(webui: Webui) -> None:
    """A1111 switches to a model it keeps in memory (sd_checkpoints_limit > 1) without calling
    on_model_loaded: the script's `process` decides before the batches."""
    networks = webui.enable_builtin()
    started(webui)
    sd1 = webui.sd_model
    # sd_models.reuse_model_from_already_loaded sets model_data.sd_model (shared.sd_model): no callback
    webui.sd_model = webui.modules.shared.sd_model = TinySD3()
    webui.generate("<lora:sd3_style:1>")
    assert networks.extra_network_lora.calls[-1] == [["sd3_style", "1"]]
    webui.sd_model = webui.modules.shared.sd_model = sd1
    base = webui.weight(Q)
    webui.generate("<lora:style:1>")
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["style"], Q), atol=1e-6)
    assert handler(webui) is webui.state.network


def test_without_the_builtin_a_tag_on_sd3_is_an_error_saying_to_enable_it(webui: Webui) -> None:
    started(webui)
    sd3 = load(webui, TinySD3())
    before = snapshot(sd3)
    result = webui.generate("<lora:sd3_style:1>")
    assert "enable 'Lora' under Extensions > Installed".lower() in result.comments.lower()
    assert result.extra_generation_params["loraprompt"] == "E-MODEL-UNSUPPORTED"
    assert changed(sd3, before) == []
    assert "loraprompt" not in webui.generate("a castle").extra_generation_params  # no tag, no error


def test_option_off_stays_off_for_sd3(webui: Webui) -> None:
    networks = webui.enable_builtin()
    webui.modules.shared.opts.data["loraprompt_handle_lora_tags"] = False
    started(webui)
    load(webui, TinySD3())
    result = webui.generate("<lora:sd3_style:1>")
    assert handler(webui) is networks.extra_network_lora
    assert "SD3" not in result.comments  # nothing was handed back: loraprompt never had the tags


def test_gallery_family_of_an_sd3_model(webui: Webui) -> None:
    started(webui)
    webui_glue = __import__("sys").modules["loraprompt_a1111.webui"]
    assert webui_glue.model_family(TinySD3()) == "sd3"
    assert webui_glue.model_family(webui.sd_model) == "sd1"
