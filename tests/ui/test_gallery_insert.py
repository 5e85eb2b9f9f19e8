"""What a card click does to the prompt: add, update in place, or remove the canonical tag."""

from __future__ import annotations

import pytest

from loraprompt.syntax import LoraActivation, format_activation, parse
from loraprompt.ui.gallery_insert import check_strength, toggle_tag

CAT = LoraActivation("cat", te=1.0, unet=1.0)


@pytest.mark.parametrize(
    ("prompt", "activation", "expected", "action"),
    [
        ("", CAT, "<lora:cat:1>, cat ears", "added"),
        ("a photo", CAT, "a photo, <lora:cat:1>, cat ears", "added"),
        ("a photo,", CAT, "a photo, <lora:cat:1>, cat ears", "added"),
        ("a photo, cat ears", CAT, "a photo, cat ears, <lora:cat:1>", "added"),  # text already there
        ("a, <lora:cat:1>, b", CAT, "a, b", "removed"),
        ("a, <lora:cat:1>, cat ears, b", CAT, "a, b", "removed"),
        ("a <lora:cat:1> b", CAT, "a b", "removed"),
        ("<lora:cat:1>", CAT, "", "removed"),
        ("a, <lora:cat:0.5>, b", CAT, "a, <lora:cat:1>, b", "updated"),
        ("a, <lora:cat:1>, b", LoraActivation("cat", te=0.5, unet=0.8), "a, <lora:cat:0.5:0.8>, b", "updated"),
        ("x <lora:catalias:1>", CAT, "x <lora:cat:1>", "updated"),  # the alias means the same file
        ("<lyco:cat:1>", CAT, "<lora:cat:1>", "updated"),
        ("<lora:other:1>", CAT, "<lora:other:1>, <lora:cat:1>, cat ears", "added"),
    ],
)
def test_toggle_table(prompt: str, activation: LoraActivation, expected: str, action: str) -> None:
    result = toggle_tag(prompt, activation, {"cat", "catalias"}, activation_text="cat ears")
    assert (result.prompt, result.action) == (expected, action)
    assert result.tag == format_activation(activation)


def test_added_tag_parses_back_to_the_activation() -> None:
    activation = LoraActivation("my lora", te=0.35, unet=1.2)
    result = toggle_tag("portrait", activation, {"my lora"})
    assert list(parse(result.prompt).loras) == [activation]
    assert parse(result.prompt).text == "portrait, "


def test_negative_text_follows_the_tag() -> None:
    added = toggle_tag("p", CAT, {"cat"}, negative="blurry", negative_text="extra tails")
    assert added.negative == "blurry, extra tails"
    removed = toggle_tag(added.prompt, CAT, {"cat"}, negative=added.negative, negative_text="extra tails")
    assert (removed.prompt, removed.negative) == ("p", "blurry")
    assert toggle_tag("p", CAT, {"cat"}, negative=None, negative_text="x").negative is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1", None, True, 1e9])
def test_bad_strengths_are_refused_with_their_label(value: object) -> None:
    with pytest.raises(ValueError, match="UNet strength"):
        check_strength("UNet", value)


def test_strengths_are_rounded_for_a_clean_tag() -> None:
    assert check_strength("te", 0.1 + 0.2) == 0.3
    assert check_strength("te", -0.0) == 0.0 and str(check_strength("te", -0.0)) == "0.0"
