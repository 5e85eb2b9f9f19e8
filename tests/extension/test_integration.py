"""Infotext written and pasted back, diagnostics shown to the user, the API routes and the cards
page, and coexistence with A1111's built-in Lora extension."""

from __future__ import annotations

import asyncio
import importlib
import json
import os

import pytest
import torch

from loraprompt.infotext import parse_lora_hashes
from loraprompt.library import file_hashes

from .conftest import Webui, expected_delta
from .ldm import changed, snapshot
from .test_generation import Q, started


def test_lora_hashes_written_and_pasted_back_to_local_name(webui: Webui) -> None:
    started(webui)
    path = webui.lora_dir / "style.safetensors"
    result = webui.generate("<lora:style:0.8>")
    hashes = parse_lora_hashes(result.extra_generation_params["Lora hashes"])
    assert hashes == {"style": file_hashes(path)["a1111"][:12]}
    # someone else's image names the same file "theirs"; as in A1111, a hash already known maps it
    infotext = f'a cat <lora:theirs:0.8>, <lora:other:1>\nSteps: 4, Seed: 1, Lora hashes: "theirs: {hashes["style"]}, other: 0123456789ab"'
    infotext_utils = importlib.import_module("modules.infotext_utils")
    fields = infotext_utils.paste(infotext)  # parse_generation_parameters, then the infotext_pasted callbacks
    assert fields["Prompt"] == "a cat <lora:style:0.8>, <lora:other:1>"


def test_unknown_lora_and_bad_number_reach_comments_and_infotext(webui: Webui) -> None:
    started(webui)
    base = webui.weight(Q)
    with pytest.warns(UserWarning, match="missing"):  # gradio's popup, outside a UI request
        result = webui.generate("<lora:style:0,8> <lora:missing:1> <lora:detail:1>")
    assert "missing" in result.comments
    assert "0,8" in result.comments
    # one style of code, the spec's (parser codes such as weight-syntax come out as E-WEIGHT-SYNTAX)
    assert result.extra_generation_params["loraprompt"] == "E-WEIGHT-SYNTAX style; E-NAME-NOTFOUND missing"
    # the loraprompt profile isolates errors per tag: detail still applies
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["detail"], Q), atol=1e-6)


def test_a1111_profile_drops_every_lora_on_a_bad_tag_and_says_so(webui: Webui) -> None:
    started(webui)
    webui.modules.shared.opts.data["loraprompt_profile"] = "a1111"
    before = snapshot(webui.sd_model)
    result = webui.generate("<lora:style:0,8> <lora:detail:1>")
    assert changed(webui.sd_model, before) == []
    assert result.comments


def test_a_profile_value_from_a_hand_edited_config_is_loraprompts(webui: Webui) -> None:
    """config.json edited by hand (`"A1111"`, a typo): the setting reads as loraprompt's profile,
    so generation keeps working with per-tag errors instead of failing in parse()."""
    started(webui)
    webui.modules.shared.opts.data["loraprompt_profile"] = "A1111"
    base = webui.weight(Q)
    result = webui.generate("<lora:style:0,8> <lora:detail:1>")
    assert result.extra_generation_params["loraprompt"] == "E-WEIGHT-SYNTAX style"
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["detail"], Q), atol=1e-6)


def test_api_routes_list_and_refresh(webui: Webui) -> None:
    started(webui)
    routes = webui.app.routes
    # both read files (a header per LoRA, a rescan): plain functions, which FastAPI runs in its
    # threadpool; a coroutine would stall A1111's event loop, and with it every other request
    assert not any(asyncio.iscoroutinefunction(fn) for fn in routes.values())
    listed = routes[("GET", "/sdapi/v1/loras")]()
    assert sorted(x["name"] for x in listed) == ["detail", "style"]
    assert listed[0]["metadata"] == {"ss_network_module": "networks.lora"}
    webui.write_lora("new", seed=3)
    assert routes[("POST", "/sdapi/v1/refresh-loras")]() is None
    assert "new" in [x["name"] for x in routes[("GET", "/sdapi/v1/loras")]()]


def test_cards_page_items_insert_tags_with_preferred_weight(webui: Webui) -> None:
    started(webui)
    (webui.lora_dir / "style.json").write_text(json.dumps({"preferred weight": 0.6, "activation text": "ink"}))
    webui.state.runtime.refresh()
    pages = importlib.import_module("modules.ui_extra_networks").extra_pages
    assert [p.title for p in pages] == ["Lora"]
    items = {i["name"]: i for i in pages[0].list_items()}
    assert items["style"]["prompt"] == '"<lora:style:" + 0.6 + ">" + " ink"'
    assert items["detail"]["prompt"] == '"<lora:detail:" + opts.extra_networks_default_multiplier + ">"'


def test_with_builtin_enabled_loraprompt_is_the_only_patcher(webui: Webui) -> None:
    networks = webui.enable_builtin()
    started(webui)
    registry = webui.modules.extra_networks
    assert registry.extra_network_registry["lora"] is webui.state.network
    assert registry.extra_network_aliases["lyco"] is webui.state.network
    assert importlib.import_module("modules.ui_extra_networks").extra_pages == []  # the built-in's page stays
    assert ("GET", "/sdapi/v1/loras") not in webui.app.routes  # and its routes
    base = webui.weight(Q)
    webui.generate("<lora:style:1>")
    assert networks.loaded_networks == []  # the built-in's hooks see nothing to patch
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["style"], Q), atol=1e-6)


def test_handler_registered_later_is_displaced_before_generation(webui: Webui) -> None:
    webui.enable_builtin()
    started(webui)
    lora_script = importlib.import_module("extra_networks_lora")
    lora_script.before_ui()  # e.g. loractl re-registering its handler after start-up
    webui.generate("<lora:style:1>")
    assert webui.modules.extra_networks.extra_network_registry["lora"] is webui.state.network


def test_steps_back_when_another_extension_drives_the_builtin(webui: Webui) -> None:
    networks = webui.enable_builtin()
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:1>")
    networks.load_networks(["style"])  # loractl / lora-block-weight calling the built-in directly
    result = webui.generate("<lora:style:1>")
    assert changed(webui.sd_model, before) == []
    assert "only one of them patches" in result.comments


def test_option_off_leaves_lora_tags_to_the_builtin(webui: Webui) -> None:
    webui.enable_builtin()
    webui.modules.shared.opts.data["loraprompt_handle_lora_tags"] = False
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:1>")
    handler = webui.modules.extra_networks.extra_network_registry["lora"]
    assert type(handler).__name__ == "ExtraNetworkLora"
    assert handler.calls == [[["style", "1"]]]
    assert changed(webui.sd_model, before) == []


def test_settings_are_registered_with_prefix(webui: Webui) -> None:
    started(webui)
    webui.modules.script_callbacks.ui_settings_callback()
    keys = [k for k in webui.modules.shared.opts.data_labels if k.startswith("loraprompt_")]
    assert "loraprompt_handle_lora_tags" in keys and "loraprompt_profile" in keys
    assert all(webui.modules.shared.opts.data_labels[k].section == ("loraprompt", "loraprompt") for k in keys)


def test_script_unload_restores_and_releases_the_tag_types(webui: Webui) -> None:
    started(webui)
    before = snapshot(webui.sd_model)
    webui.generate("<lora:style:1>")
    webui.modules.script_callbacks.script_unloaded_callback()
    assert changed(webui.sd_model, before) == []
    assert "lora" not in webui.modules.extra_networks.extra_network_registry
    assert "lyco" not in webui.modules.extra_networks.extra_network_aliases


def test_builtin_add_network_to_prompt_option_is_honoured(webui: Webui) -> None:
    webui.enable_builtin()
    started(webui)
    webui.modules.shared.opts.data["sd_lora"] = "style"
    base = webui.weight(Q)
    result = webui.generate("a cat")
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["style"], Q), atol=1e-6)
    assert result.p.all_prompts == ["a cat<lora:style:1.0>"]
    assert "style" in result.extra_generation_params["Lora hashes"]
    # a LoRA deleted since the option was set: A1111 adds nothing (it checks available_networks)
    webui.modules.shared.opts.data["sd_lora"] = "deleted_since"
    result = webui.generate("a dog")
    assert result.p.all_prompts == ["a dog"]
    assert not result.comments


def test_broken_file_is_reported_and_the_others_still_apply(webui: Webui) -> None:
    started(webui)
    broken = webui.lora_dir / "broken.safetensors"
    broken.write_bytes(len(b"{not json}").to_bytes(8, "little") + b"{not json}")
    os.utime(broken, (1e9, 1e9))  # settled: not a file still being written
    webui.state.runtime.refresh()
    base = webui.weight(Q)
    result = webui.generate("<lora:broken:1> <lora:style:1>")
    assert "broken" in result.comments and "JSON" in result.comments, result.comments
    assert torch.allclose(webui.weight(Q), base + expected_delta(webui.files["style"], Q), atol=1e-6)


def test_unexpected_model_layout_is_reported_not_swallowed(webui: Webui) -> None:
    started(webui)
    del webui.sd_model.cond_stage_model  # e.g. a model type loraprompt does not know
    result = webui.generate("<lora:style:1>")
    assert "no LoRA applied" in result.comments


def test_cards_page_preferred_weight_from_a_sidecar_is_a_number_not_code(webui: Webui) -> None:
    started(webui)
    (webui.lora_dir / "style.json").write_text(json.dumps({"preferred weight": "1+alert(document.cookie)"}))
    (webui.lora_dir / "detail.json").write_text(json.dumps({"preferred weight": "0.7"}))
    webui.state.runtime.refresh()
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    items = {i["name"]: i for i in page.list_items()}
    # the prompt is JavaScript A1111 evaluates on click: a sidecar's text never becomes code in it
    assert items["style"]["prompt"] == '"<lora:style:" + opts.extra_networks_default_multiplier + ">"'
    assert items["detail"]["prompt"] == '"<lora:detail:" + 0.7 + ">"'


def test_cards_page_lists_each_file_once_when_two_folders_hold_the_same_stem(webui: Webui) -> None:
    started(webui)
    (webui.lora_dir / "sub").mkdir()
    webui.write_lora("sub/style", seed=5)
    webui.state.runtime.refresh()
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    filenames = sorted(os.path.relpath(i["filename"], webui.lora_dir) for i in page.list_items())
    assert filenames == sorted(["detail.safetensors", "style.safetensors", os.path.join("sub", "style.safetensors")])


def test_tab_notice_shows_the_tags_as_written_in_markdown(webui: Webui) -> None:
    from markdown_it import MarkdownIt  # what gradio renders gr.Markdown with

    started(webui)
    tab = importlib.import_module("loraprompt_a1111.tab")
    for handles, builtin in ((True, True), (True, False), (False, True), (False, False)):
        rendered = MarkdownIt().render(tab.notice(handles, builtin))
        assert "<a " not in rendered  # `<lora:...>` unquoted is a CommonMark autolink
        assert "&lt;lora:...&gt;" in rendered


def test_cards_page_and_paste_honour_lora_preferred_name(webui: Webui) -> None:
    started(webui)
    path = webui.write_lora("aliased", seed=7, metadata={"ss_network_module": "networks.lora", "ss_output_name": "pretty"})
    webui.state.runtime.refresh()
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    short = file_hashes(path)["a1111"][:12]
    webui.generate("<lora:aliased:1>")  # as in A1111, only hashes already computed are known

    def prompt() -> str:
        return str({i["name"]: i for i in page.list_items()}["aliased"]["prompt"])

    assert prompt().startswith('"<lora:pretty:"')  # A1111's default: "Alias from file"
    assert webui.state.runtime.lookup_hash(short) == "pretty"
    webui.modules.shared.opts.data["lora_preferred_name"] = "Filename"  # the built-in's option, kept in config.json
    assert prompt().startswith('"<lora:aliased:"')
    assert webui.state.runtime.lookup_hash(short) == "aliased"


def test_cards_page_local_preview_uses_the_samples_format(webui: Webui) -> None:
    started(webui)
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    assert {i["name"]: i for i in page.list_items()}["style"]["local_preview"] == str(webui.lora_dir / "style.png")
    webui.modules.shared.opts.data["samples_format"] = "jpg"  # "Replace preview" saves <stem>.<samples_format>
    assert {i["name"]: i for i in page.list_items()}["style"]["local_preview"] == str(webui.lora_dir / "style.jpg")


def test_header_metadata_is_read_once_per_file_version(webui: Webui) -> None:
    started(webui)
    api = importlib.import_module("loraprompt_a1111.api")
    tags = json.dumps({"10_x": {"ink": 3}})
    path = webui.write_lora("tagged", seed=8, metadata={"ss_tag_frequency": tags})
    first, second = api.header_metadata(str(path)), api.header_metadata(str(path))
    assert first == second == {"ss_tag_frequency": {"10_x": {"ink": 3}}}
    assert first["ss_tag_frequency"] is second["ss_tag_frequency"]  # cached: not read and decoded again
    first["extra"] = 1  # a caller changing its copy changes nothing for the next one
    assert "extra" not in api.header_metadata(str(path))
    webui.write_lora("tagged", seed=8, metadata={"ss_tag_frequency": json.dumps({"10_x": {"ink": 4}})})
    os.utime(path, ns=(os.stat(path).st_mtime_ns + 10**9,) * 2)
    assert api.header_metadata(str(path)) == {"ss_tag_frequency": {"10_x": {"ink": 4}}}


def card_tag(item: dict[str, object], multiplier: str = "1") -> str:
    """The tag a click on the card writes: A1111 evaluates item["prompt"] with the default multiplier."""
    return str(eval(str(item["prompt"]), {"opts": type("Opts", (), {"extra_networks_default_multiplier": multiplier})}))


def test_cards_page_warns_about_names_that_break_a_tag_and_inserts_a_working_one(webui: Webui) -> None:
    """Stems with `: > = #` (which end or split a <lora:...> tag): the card says so in its
    description, as the gallery's badge does, and inserts the alias or a clean name with hash=."""
    started(webui)
    ink = webui.write_lora("style: ink", seed=11)
    webui.write_lora("x>y", seed=12, metadata={"ss_network_module": "networks.lora", "ss_output_name": "xy_clean"})
    webui.state.runtime.refresh()
    page = importlib.import_module("modules.ui_extra_networks").extra_pages[0]
    items = {i["name"]: i for i in page.list_items()}
    short = file_hashes(ink)["a1111"][:12]
    assert card_tag(items["style: ink"]) == f"<lora:style_ ink:1:hash={short}>"
    # A1111 escapes descriptions ("Treat card description as HTML" is off by default): plain text
    note = str(items["style: ink"]["description"])
    assert note == ("\u26a0 The name style: ink contains :, which breaks a <lora:...> tag; the card inserts "
                    "style_ ink with the file's hash=, which finds it.")
    assert "<span" not in note
    assert card_tag(items["x>y"]) == "<lora:xy_clean:1>" and not items["x>y"].get("description")  # A1111 inserts the alias
    webui.modules.shared.opts.data["lora_preferred_name"] = "Filename"
    items = {i["name"]: i for i in page.list_items()}
    assert card_tag(items["x>y"]) == "<lora:xy_clean:1>"
    assert "The name x>y contains >, which breaks" in str(items["x>y"]["description"])
    assert not items["style"].get("description")  # a plain name: no note
    # what the card inserts applies that file, with nothing to complain about
    base = webui.weight(Q)
    result = webui.generate("a cat " + card_tag(items["style: ink"], "0.5"))
    assert "loraprompt" not in result.extra_generation_params
    assert torch.allclose(webui.weight(Q), base + 0.5 * expected_delta(webui.files["style: ink"], Q), atol=1e-6)
    # the a1111 profile reads no hash=: the card says to rename the file instead
    webui.modules.shared.opts.data["loraprompt_profile"] = "a1111"
    item = {i["name"]: i for i in page.list_items()}["style: ink"]
    assert "hash=" not in card_tag(item) and str(item["description"]).endswith("rename the file.")
    # with the option on, the warning is markup (escaped) ahead of the user's own HTML description
    webui.modules.shared.opts.data["extra_networks_card_description_is_html"] = True
    ink.with_suffix(".json").write_text(json.dumps({"description": "<b>inked</b> lines"}), encoding="utf8")
    page.lister.reset()  # the page's refresh: A1111's create_html resets the folder listings it keeps
    item = {i["name"]: i for i in page.list_items()}["style: ink"]
    assert str(item["description"]) == ('<span class="loraprompt-tag-note">\u26a0 The name style: ink contains :, which '
                                        "breaks a &lt;lora:...&gt; tag, and loraprompt&#x27;s a1111 profile (no hash=) "
                                        "has no other name for it: rename the file.</span><br><b>inked</b> lines")
    webui.modules.shared.opts.data["extra_networks_card_description_is_html"] = False
    item = {i["name"]: i for i in page.list_items()}["style: ink"]
    assert str(item["description"]).endswith("rename the file.\n<b>inked</b> lines")


def test_a_changed_tag_syntax_setting_empties_a1111s_cond_cache(webui: Webui) -> None:
    """A1111 caches conditioning by prompt and extra-network parameters, which a loraprompt option
    does not change; found in a real A1111 v1.10.1: after switching Tag syntax, the same prompt
    reused the text encoder's output of the old setting. The cache is emptied then, and only then."""
    started(webui)
    processing = importlib.import_module("modules.processing")
    caches = [processing.StableDiffusionProcessing.cached_c, processing.StableDiffusionProcessing.cached_uc,
              processing.StableDiffusionProcessingTxt2Img.cached_hr_c, processing.StableDiffusionProcessingTxt2Img.cached_hr_uc]

    def fill() -> None:  # as get_conds_with_caching leaves them: [cached_params, conds]
        for cache in caches:
            cache[:] = ["params", "conds"]

    opts = webui.modules.shared.opts.data
    webui.generate("a cat <lora:style:0.5> <lora:detail:0,8>")
    fill()
    webui.generate("a cat <lora:style:0.5> <lora:detail:0,8>")
    assert all(cache == ["params", "conds"] for cache in caches)  # nothing changed: A1111's cache is kept
    for name, value in (("loraprompt_profile", "a1111"), ("loraprompt_family_check", False)):
        opts[name] = value
        webui.generate("a cat <lora:style:0.5> <lora:detail:0,8>")
        assert all(cache == [None, None] for cache in caches), name
        fill()
    webui.generate("a cat")
    assert all(cache == ["params", "conds"] for cache in caches)
