"""Infotext: A1111's `parameters` text, built and parsed back, with the `Lora hashes` field."""

from __future__ import annotations

import pytest

from loraprompt.infotext import (
    GenerationInfo,
    format_infotext,
    format_lora_hashes,
    infotext_loras,
    lora_hash_name,
    parse_infotext,
    parse_lora_hashes,
    quote,
    remap_lora_names,
    unquote,
)

# What A1111 1.10 writes for a txt2img with two LoRAs (spec a1111.md §3.6: names lose `:` and `,`,
# the value is JSON-quoted because it holds both).
A1111_TEXT = (
    "masterpiece, 1girl, <lora:detail_tweaker:0.8>, <lora:add,style:0.5>\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Lora hashes: "detail_tweaker: 0123456789ab, addstyle: ba9876543210", Version: v1.10.1'
)

# The example in A1111's parse_generation_parameters docstring (an old infotext without LoRAs).
A1111_DOCSTRING = (
    "girl with an artist's beret, determined, blue eyes, desert scene, ((eyeshadow)), (coquettish)\n"
    "Negative prompt: ugly, fat, (((deformed))), [blurry], bad anatomy, (extra_limb)\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)


def test_parses_a1111_infotext_with_lora_hashes() -> None:
    fields = parse_infotext(A1111_TEXT)
    assert fields["Prompt"] == "masterpiece, 1girl, <lora:detail_tweaker:0.8>, <lora:add,style:0.5>"
    assert fields["Negative prompt"] == "lowres, bad anatomy"
    assert fields["Steps"] == "20"
    assert fields["Sampler"] == "DPM++ 2M"
    assert fields["Schedule type"] == "Karras"
    assert (fields["Size-1"], fields["Size-2"]) == ("512", "768")
    assert fields["Lora hashes"] == "detail_tweaker: 0123456789ab, addstyle: ba9876543210"
    assert fields["Version"] == "v1.10.1"
    assert parse_lora_hashes(fields["Lora hashes"]) == {
        "detail_tweaker": "0123456789ab",
        "addstyle": "ba9876543210",
    }


def test_parses_a1111_docstring_example() -> None:
    fields = parse_infotext(A1111_DOCSTRING)
    assert fields["Prompt"].startswith("girl with an artist's beret")
    assert fields["Negative prompt"].endswith("(extra_limb)")
    assert fields["Seed"] == "965400086"
    assert fields["Model hash"] == "45dee52b"
    assert "Lora hashes" not in fields


def test_format_matches_a1111_layout_and_round_trips() -> None:
    info = GenerationInfo(
        prompt="masterpiece, 1girl, <lora:detail_tweaker:0.8>, <lora:add,style:0.5>",
        negative_prompt="lowres, bad anatomy",
        steps=20,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=7.0,
        seed=1234567890,
        width=512,
        height=768,
        model="v1-5-pruned-emaonly",
        model_hash="6ce0161689",
        lora_hashes={"detail_tweaker": "0123456789ab", "add,style": "ba9876543210"},
        extra={"Version": "v1.10.1"},
    )
    text = format_infotext(info)
    assert text == A1111_TEXT
    fields = parse_infotext(text)
    assert fields["Prompt"] == info.prompt
    assert fields["Negative prompt"] == info.negative_prompt
    assert fields["CFG scale"] == "7"
    assert parse_lora_hashes(fields["Lora hashes"]) == {"detail_tweaker": "0123456789ab", "addstyle": "ba9876543210"}


def test_multiline_prompt_and_no_negative_round_trip() -> None:
    info = GenerationInfo(prompt="line one\nline two: with colon", seed=3, cfg_scale=7.5)
    text = format_infotext(info)
    assert "Negative prompt" not in text
    fields = parse_infotext(text)
    assert fields["Prompt"] == "line one\nline two: with colon"
    assert fields["Negative prompt"] == ""
    assert fields["CFG scale"] == "7.5"
    assert "Model" not in fields  # None values are left out


def test_text_without_parameter_line_is_all_prompt() -> None:
    fields = parse_infotext("just a prompt, with: two fields")
    assert fields == {"Prompt": "just a prompt, with: two fields", "Negative prompt": ""}


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("plain", "plain"), ("a, b", '"a, b"'), ("k: v", '"k: v"'), ('say "hi", ok', '"say \\"hi\\", ok"'), ("é, ü", '"é, ü"')],
)
def test_quote_unquote(value: str, quoted: str) -> None:
    assert quote(value) == quoted
    assert unquote(quoted) == value


def test_unquote_leaves_broken_json_alone() -> None:
    assert unquote('"not \\q json"') == '"not \\q json"'


def test_lora_hash_names_drop_colon_and_comma() -> None:
    assert lora_hash_name("sub/my:lora, v2") == "sub/mylora v2"
    assert format_lora_hashes({"a:b": "111111111111", "c,d": "222222222222"}) == "ab: 111111111111, cd: 222222222222"
    assert parse_lora_hashes("  x: 1 , broken, y:2") == {"x": "1", "y": "2"}


def test_remap_lora_names_by_hash() -> None:
    prompt = "a <lora:theirs:0.7> b <lora:unknown:1> <lora:nohash:0.5>"
    local = {"0123456789ab": "mine_v2"}
    out = remap_lora_names(prompt, {"theirs": "0123456789ab", "unknown": "ffffffffffff"}, local.get)
    assert out == "a <lora:mine_v2:0.7> b <lora:unknown:1> <lora:nohash:0.5>"


def test_infotext_loras_pairs_tags_with_hashes() -> None:
    syntax = pytest.importorskip("loraprompt.syntax")
    if not hasattr(syntax, "parse"):
        pytest.skip("the prompt parser has not landed yet")
    loras = infotext_loras(parse_infotext(A1111_TEXT))
    assert [(x.name, x.te, x.short_hash) for x in loras] == [
        ("detail_tweaker", 0.8, "0123456789ab"),
        ("add,style", 0.5, "ba9876543210"),
    ]


def test_addnet_tags_follow_a1111s_paste_of_additional_networks_fields() -> None:
    """networks.infotext_pasted (A1111 v1.10.1): module LoRA only, `name(hash)` cut to the name,
    Weight A (UNet) with a default of 1.0; here also Weight B (text encoder) where it differs, the
    name a lookup gives for the hash, and no tag for a weight that is not a number."""
    from loraprompt.infotext import addnet_tags

    fields = parse_infotext(
        "x\nSteps: 1, AddNet Module 2: LoRA, AddNet Model 2: my lora v2 (ABCDEF012345), AddNet Module 1: LoRA, "
        "AddNet Model 1: plain, AddNet Weight A 1: -0.5, AddNet Module 3: LoRA, AddNet Model 3: bad(123456789abc), "
        "AddNet Weight A 3: x, AddNet Module 4: LyCORIS, AddNet Model 4: loha(1234567890ab)")
    assert addnet_tags(fields) == ["<lora:my lora v2:1>", "<lora:plain:-0.5>"]  # in the order the fields come
    assert addnet_tags(fields, {"abcdef012345": "mine"}.get) == ["<lora:mine:1>", "<lora:plain:-0.5>"]
    assert addnet_tags(parse_infotext("x\nSteps: 1")) == []
