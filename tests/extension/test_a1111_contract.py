"""Places where A1111 v1.10.1's own code (mirrored by the fake) behaves otherwise than the glue
assumed; each test names the A1111 lines it follows."""

from __future__ import annotations

import importlib

import torch
from safetensors.torch import save_file

from .conftest import Webui, lora_tensors
from .ldm import changed, snapshot
from .test_generation import started


def test_a_cover_image_value_a1111_cannot_read_does_not_break_the_cards_page(webui: Webui) -> None:
    """modules/ui_extra_networks.py:666 json.loads `ssmd_cover_images` in find_embedded_preview: a
    header value that is not a JSON list (any file from the internet) raised out of list_items, and
    A1111 showed no Lora card at all. Such a card now has no embedded preview; a readable one keeps it."""
    webui.write_lora("garbled", seed=3, metadata={"ssmd_cover_images": "not json"})
    webui.write_lora("decoded", seed=4, metadata={"ssmd_cover_images": '{"a": 1}'})  # decoded to a dict on read
    webui.write_lora("number", seed=5, metadata={"ssmd_cover_images": "5"})
    webui.write_lora("covered", seed=6, metadata={"ssmd_cover_images": '["aGVsbG8="]'})
    started(webui)
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    items = {i["name"]: i for i in page.list_items()}
    assert {"garbled", "decoded", "number", "covered", "style", "detail"} <= set(items)
    assert items["garbled"]["preview"] is None and items["decoded"]["preview"] is None and items["number"]["preview"] is None
    assert items["covered"]["preview"] == "./sd_extra_networks/cover-images?page=lora&item=covered"


def test_add_network_to_prompt_kept_in_config_json_is_ignored_without_the_builtin(webui: Webui) -> None:
    """`sd_lora` ("Add network to prompt") is the built-in's option (extensions-builtin/Lora/scripts/
    lora_script.py:36), read only by its handler (extra_networks_lora.py:15-21). With the built-in
    disabled, A1111 keeps its value in config.json (modules/options.py:200 loads every key) but
    Settings no longer shows it: loraprompt added that LoRA to every prompt with no way to turn it off."""
    started(webui)
    webui.modules.shared.opts.data["sd_lora"] = "style"  # set while the built-in was enabled
    before = snapshot(webui.sd_model)
    result = webui.generate("a cat")
    assert result.p.all_prompts == ["a cat"]
    assert changed(webui.sd_model, before) == []
    assert "Lora hashes" not in result.extra_generation_params


def test_a_bundled_embedding_of_another_width_is_skipped_as_the_builtin_does(webui: Webui) -> None:
    """The built-in registers a bundled embedding only when its width is the model's
    (extensions-builtin/Lora/networks.py:352, `emb_db.expected_shape`), as A1111 does for embedding
    files (textual_inversion.py:187); loraprompt registered any, and a prompt using the word then
    failed in sd_hijack's EmbeddingsWithFixes (torch.cat of 768 and 1024 wide rows, sd_hijack.py:362)."""
    tensors = {**lora_tensors(9), "bundle_emb.tok.string_to_param.*": torch.ones(1, 16)}
    save_file(tensors, str(webui.lora_dir / "bundled.safetensors"), metadata={"ss_network_module": "networks.lora"})
    started(webui)
    db = importlib.import_module("modules.sd_hijack").model_hijack.embedding_db
    db.expected_shape = 32  # another model family's width
    result = webui.generate("a tok <lora:bundled:1>")
    assert "tok" not in db.word_embeddings
    assert "W-EMBEDDING-SKIPPED bundled" in result.extra_generation_params["loraprompt"]
    db.expected_shape = 16
    result = webui.generate("a tok <lora:bundled:1>")
    assert db.word_embeddings["tok"].shape == 16 and "loraprompt" not in result.extra_generation_params


def test_settings_exist_when_a1111_runs_without_its_ui(webui: Webui) -> None:
    """With --nowebui, webui.py:26-45 (api_only) never builds the UI, and ui.py:262 is the only
    caller of ui_settings_callback: options registered in on_ui_settings did not exist, so
    POST /sdapi/v1/options (api.py:684) and a request's override_settings (processing.py:833) with a
    loraprompt_ key raised KeyError in opts.set (options.py:151), an HTTP 500. They are registered
    when the script loads, as the built-in registers its own (scripts/lora_script.py:35)."""
    started(webui)  # before_ui and app_started(None, app): what api_only() runs
    opts = webui.modules.shared.opts
    assert {"loraprompt_profile", "loraprompt_handle_lora_tags", "loraprompt_hashes_in_infotext"} <= set(opts.data_labels)
    assert opts.data_labels["loraprompt_profile"].section == ("loraprompt", "loraprompt")
    assert opts.set("loraprompt_hashes_in_infotext", False, is_api=True)
    assert "Lora hashes" not in webui.generate("<lora:style:1>").extra_generation_params


def test_a_refreshed_card_keeps_its_tag_name_warning(webui: Webui) -> None:
    """After the card editor saves, A1111 rebuilds that one card (get_single_card,
    modules/ui_extra_networks.py:161-167): create_item, then read_user_metadata once more, which put
    the sidecar's description back without the warning that the file's name breaks a tag."""
    webui.write_lora("style: ink", seed=11)
    (webui.lora_dir / "style: ink.json").write_text('{"description": "my notes"}', encoding="utf-8")
    started(webui)
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    listed = {i["name"]: i for i in page.list_items()}["style: ink"]
    item = page.create_item("style: ink", enable_filter=False)  # what get_single_card does
    page.read_user_metadata(item, use_cache=False)
    assert item["description"] == listed["description"]
    assert item["description"].startswith("\u26a0 The name style: ink contains :") and item["description"].endswith("\nmy notes")
    page.read_user_metadata(item)  # said once, however often it is read
    assert item["description"] == listed["description"]


def test_pasted_additional_networks_fields_become_tags_without_the_builtin(webui: Webui) -> None:
    """The built-in Lora turns kohya's Additional Networks infotext (`AddNet Model 1: name(hash)`,
    `AddNet Weight A 1` UNet, `B 1` text encoder) into `<lora:...>` tags on paste
    (extensions-builtin/Lora/networks.py:694-722, registered by lora_script.py:32); with it disabled
    and loraprompt handling tags, older images' LoRAs were lost on paste. Now the same happens, with
    the local name of a known hash (as `Lora hashes` pastes do) and the text-encoder weight kept,
    unless that extension, which pastes its own fields, is installed (networks.py:695)."""
    from loraprompt.infotext import parse_lora_hashes

    started(webui)
    result = webui.generate("<lora:style:1>")  # A1111 maps only hashes it knows already
    short = parse_lora_hashes(result.extra_generation_params["Lora hashes"])["style"]
    infotext = (f"a cat\nSteps: 4, Seed: 1, AddNet Enabled: True, AddNet Module 1: LoRA, AddNet Model 1: "
                f"theirStyle({short}), AddNet Weight A 1: 0.8, AddNet Weight B 1: 0.5, AddNet Module 2: LoRA, "
                "AddNet Model 2: elsewhere(0123456789ab), AddNet Weight A 2: 0.7, AddNet Weight B 2: 0.7, "
                "AddNet Module 3: LyCORIS, AddNet Model 3: other(abcdef012345), AddNet Weight A 3: 1")
    paste = importlib.import_module("modules.infotext_utils").paste
    assert paste(infotext)["Prompt"] == "a cat\n<lora:style:0.5:0.8><lora:elsewhere:0.7>"
    scripts = importlib.import_module("modules.scripts")
    scripts.scripts_txt2img = scripts.ScriptRunner()
    try:
        scripts.scripts_txt2img.infotext_fields.append((None, "AddNet Module 1"))  # the extension's own UI
        assert paste(infotext)["Prompt"] == "a cat"
    finally:
        scripts.scripts_txt2img = None


def test_with_the_builtin_enabled_its_own_paste_adds_the_additional_networks_tags(webui: Webui) -> None:
    """The enabled built-in adds those tags itself (networks.py:694-722): loraprompt adds none, so
    a paste never gets them twice (the stand-in of the built-in does not paste: the prompt stays)."""
    webui.enable_builtin()
    started(webui)
    infotext = ("a cat\nSteps: 4, AddNet Enabled: True, AddNet Module 1: LoRA, AddNet Model 1: style(0123456789ab), "
                "AddNet Weight A 1: 0.8, AddNet Weight B 1: 0.8")
    assert importlib.import_module("modules.infotext_utils").paste(infotext)["Prompt"] == "a cat"
