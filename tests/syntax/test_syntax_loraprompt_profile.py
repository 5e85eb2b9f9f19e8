"""spec/syntax.md §4: the loraprompt profile — extension syntaxes, per-tag errors and diagnostics."""

from __future__ import annotations

from typing import Any

import pytest

from loraprompt.errors import PromptSyntaxError
from loraprompt.syntax import LoraActivation, Schedule, StepPoint, format_activation, parse, parse_batch

RAMP = Schedule(((0.0, 0.0), (1.0, 1.0)))

# one tag -> the activation fields it sets (everything else at its default)
EXTENSIONS: list[tuple[str, dict[str, Any]]] = [
    ("<lora:x:0.5:te=0.3>", {"te": 0.3, "unet": 0.3}),
    ("<lora:x:te=0.3:unet=0.7:dyn=8>", {"te": 0.3, "unet": 0.7, "dyn": 8}),
    ("<lora:x:0@0,1@1>", {"te": RAMP, "unet": RAMP}),
    ("<lora:x:1:0~0;1~1>", {"te": 1.0, "unet": RAMP}),
    ("<lora:x:1@1,0@0>", {"te": RAMP, "unet": RAMP}),
    ("<lora:x:0.5@0,1>", {"te": RAMP.__class__(((0.0, 0.5), (1.0, 1.0))), "unet": Schedule(((0.0, 0.5), (1.0, 1.0)))}),
    ("<lora:x:1:sched=0@0,1@1>", {"te": RAMP, "unet": RAMP}),
    ("<lora:x:1:unet_sched=0@0,1@1>", {"te": 1.0, "unet": RAMP}),
    ("<lora:x:1:te_sched=0@0,1@1>", {"te": RAMP, "unet": 1.0}),
    ("<lora:x:0.8:hr=0.4>", {"te": 0.8, "unet": 0.8, "hr_te": 0.4, "hr_unet": 0.4}),
    ("<lora:x:hr=0.4:hrunet=0.2>", {"hr_te": 0.4, "hr_unet": 0.2}),
    ("<lora:x:1:start=3:stop=10>", {"start": StepPoint(3, False), "stop": StepPoint(10, False)}),
    ("<lora:x:1:step=2-8>", {"start": StepPoint(2, False), "stop": StepPoint(8, False)}),
    ("<lora:x:1:start=0.25>", {"start": StepPoint(0.25, True)}),
    ("<lora:x:1:in=0:mid=0.5:out=1>", {"groups": {"in": 0.0, "mid": 0.5, "out": 1.0}}),
    ("<lora:x:1:module=high:hash=0123456789ab>", {"module": "high", "hash": "0123456789ab"}),
    ("<lora:x:0.7:high>", {"te": 0.7, "unet": 0.7, "flags": ("high",)}),
    ("<lora:x:low>", {"te": 1.0, "unet": 1.0, "flags": ("low",)}),
    ("<lora:x:1:lbwe=ELEM:foo=bar>", {"lbwe": "ELEM", "extras": {"foo": "bar"}}),
    ("<lora:x:1:dyn=>", {}),
    ("<lora:x:>", {}),
    ("<lora:x:0.6:te=>", {"te": 0.6, "unet": 0.6}),
]


@pytest.mark.parametrize(("prompt", "fields"), EXTENSIONS)
def test_extension_syntax(prompt: str, fields: dict[str, Any]) -> None:
    (lora,) = parse(prompt).loras
    expected = LoraActivation("x", **fields)
    assert lora == expected


LBW_MIDD = {"BASE": 1.0, "IN01": 0.0, "IN02": 0.0, "IN04": 0.0, "IN05": 1.0, "IN07": 1.0, "IN08": 1.0, "M00": 1.0,
            "OUT03": 1.0, "OUT04": 1.0, "OUT05": 1.0, "OUT06": 1.0, "OUT07": 0.0, "OUT08": 0.0, "OUT09": 0.0,
            "OUT10": 0.0, "OUT11": 0.0}


@pytest.mark.parametrize("prompt", ["<lora:x:1:lbw=MIDD>", "<lora:x:1:w=MIDD>", "<lora:x:1:MIDD>"])
def test_block_weight_preset(prompt: str) -> None:
    parsed = parse(prompt)
    (lora,) = parsed.loras
    assert dict(lora.blocks) == LBW_MIDD and lora.lbw == "MIDD"
    positional = "lbw-positional" in [d.code for d in parsed.diagnostics]
    assert positional == prompt.endswith(":MIDD>")


def test_block_weight_vector_with_x_and_randoms() -> None:
    (lora,) = parse("<lora:x:0.5:lbw=0.5,1,X,X+0.25,X-1,R,U,0,0,0,0,1:x=2>").loras
    assert list(lora.blocks) == ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02",
                                 "OUT03", "OUT04", "OUT05"]
    assert [lora.blocks[b] for b in ("IN05", "IN07", "IN08", "M00", "OUT00")] == [2.0, 2.25, 1.0, "R", "U"]
    assert lora.te_at(0, 10) == 0.25  # te x BASE
    assert lora.unet_at(0, 10, block="IN05") == 1.0
    assert lora.unet_at(0, 10, block="OUT05") == 0.5
    assert 0.0 <= lora.unet_at(0, 10, block="M00") <= 0.5


def test_positional_block_weights_take_x_from_slot_3() -> None:
    (lora,) = parse("<lora:x:1:1,0,0,0,0,0,0,0,0,0,0,X:0.3>").loras
    assert lora.x == 0.3 and lora.blocks["OUT05"] == 0.3 and lora.dyn is None


# a tag -> (diagnostic codes it must raise, whether it is still applied)
DIAGNOSTICS = [
    ("<lora:te=1>", {"name-missing"}, False),
    ("<lora: :1>", {"name-empty"}, False),
    ("<lora:x:0,8>", {"weight-syntax"}, False),
    ("<lora:x:abc>", {"weight-syntax"}, False),
    ("<lora:x:inf>", {"weight-nonfinite"}, False),
    ("<lora:x:1:nan>", {"weight-nonfinite"}, False),
    ("<lora:x:1:1:64.0>", {"dyn-syntax"}, False),
    ("<lora:x:1:lbw=NOPE>", {"lbw-preset"}, False),
    ("<lora:x:1:lbw=1,0,1>", {"lbw-length"}, False),
    ("<lora:x:1:lbw=1,0,X,1,1,1,1,1,1,1,1,1>", {"lbw-x-missing"}, False),
    ("<lora:x:1:NOPE>", {"weight-syntax"}, False),
    ("<lora:x:1:1:NOPE>", {"dyn-syntax"}, False),
    ("<lora:x:1:hash=xyz>", {"hash-syntax"}, False),
    ("<lora:x:1:start=soon>", {"step-syntax"}, False),
    ("<lora:x:1:start=1e400>", {"step-syntax"}, False),  # no step is computed from inf or nan
    ("<lora:x:1:stop=nan>", {"step-syntax"}, False),
    ("<lora:x:1:step=0-1e400>", {"step-syntax"}, False),
    ("<lora:x:1:lbw=1e400,1,1,1,1,1,1,1,1,1,1,1>", {"lbw-value"}, False),  # inf in the weights
    ("<lora:x:1:lbw=1,nan,1,1,1,1,1,1,1,1,1,1>", {"lbw-value"}, False),
    ("<lora:x:0@0,1@1@2>", {"weight-syntax"}, False),
    ("<LoRA:x:1>", {"type-case"}, False),
    ("<foo:x:1>", {"type-unknown"}, False),
    ("<lora:x:1:foo=1>", {"key-unknown"}, True),
    ("<lora:x: te =0.2>", {"key-spaced"}, True),
    ("<lora:x:1:1:8:9>", {"extra-positional"}, True),
    ("<lora:x:>", {"weight-empty"}, True),
    ("<lora:x:1_0>", {"number-noncanonical"}, True),
    ("<lora:x:+.5>", {"number-noncanonical"}, True),
    ("<lora:a=b:0.7>", {"name-has-equals"}, True),
    ("<lora:x:1:MIDD>", {"lbw-positional", "a1111-drop-all"}, True),
    ("<lora:x:0@0,1@1>", {"a1111-drop-all"}, True),
    ("<lora:x:1:lbw=ALL:in=0>", {"lbw-groups-conflict"}, True),
    ("<lora:x:1\n>", {"unclosed-tag"}, True),
]


@pytest.mark.parametrize(("prompt", "codes", "applied"), DIAGNOSTICS)
def test_diagnostics(prompt: str, codes: set[str], applied: bool) -> None:
    parsed = parse(f"ok <lora:y:1> {prompt}")
    found = {d.code for d in parsed.diagnostics}
    assert codes <= found
    assert [a.name for a in parsed.loras if a.name != "y"] == (["x"] if applied and "name-has-equals" not in codes
                                                              else ["0.7"] if applied else [])
    assert parsed.loras[0].name == "y"  # the other tag is never dropped
    for d in parsed.diagnostics:
        assert d.code == d.code.lower() and " " not in d.code
        if d.span is not None:
            assert parsed.source[d.span[0]:d.span[1]].startswith("<")


def test_strict_mode_raises_with_position() -> None:
    with pytest.raises(PromptSyntaxError) as info:
        parse("a <lora:x:0,8>", strict=True)
    assert info.value.span == (2, 14)
    assert parse("a <lora:x:0.8>", strict=True).loras[0].te == 0.8


def test_default_weight_option_only_in_loraprompt_profile() -> None:
    assert parse("<lora:x>", default_weight=0.7).loras[0].te == 0.7
    assert parse("<lora:x>", profile="a1111", default_weight=0.7).loras[0].te == 1.0


def test_custom_presets() -> None:
    presets = {"MINE": tuple("1,0,0,0,0,1,1,1,1,1,1,1".split(","))}
    (lora,) = parse("<lora:x:1:lbw=MINE>", presets=presets).loras
    assert lora.blocks["M00"] == 1.0 and lora.blocks["IN04"] == 0.0


def test_unknown_profile_is_an_error() -> None:
    with pytest.raises(ValueError, match="profile"):
        parse("x", profile="comfy")  # type: ignore[arg-type]


@pytest.mark.parametrize("call, error, match", [
    (lambda: parse(None), TypeError, "prompt must be a str, not NoneType"),  # type: ignore[arg-type]
    (lambda: parse(b"a <lora:x:1>"), TypeError, "prompt must be a str, not bytes"),  # type: ignore[arg-type]
    (lambda: parse("<lora:x:1>", negative=True, negative_tags="drop"), ValueError, "negative_tags"),  # type: ignore[arg-type]
    (lambda: parse("<lora:x:1><lora:x:2>", duplicates="Sum"), ValueError, "duplicates"),  # type: ignore[arg-type]
    (lambda: parse_batch("a <lora:x:1>"), TypeError, "list of prompts, not one str"),
    (lambda: format_activation("x"), TypeError, "LoraActivation"),  # type: ignore[arg-type]
    (lambda: format_activation(LoraActivation("x"), style="comfy"), ValueError, "style"),  # type: ignore[arg-type]
])
def test_misused_arguments_are_refused_by_name(call: Any, error: type[Exception], match: str) -> None:
    """A wrong type raised a bare TypeError from inside the scanner (or AttributeError); a
    misspelt option silently meant another policy (duplicates="Sum" applied the last
    occurrence); parse_batch("one prompt") parsed each character as a prompt."""
    with pytest.raises(error, match=match):
        call()


# strength at a step: loractl normalisation (step / (n - 2)), start/stop gating, hires weights
STEPS = [
    ("<lora:x:0@0,1@1>", 12, [0.0, 0.1, 0.5, 1.0, 1.0], [0, 1, 5, 10, 11]),
    ("<lora:x:0@0,1@10>", 20, [0.0, 0.5, 1.0, 1.0], [0, 5, 10, 19]),
    ("<lora:x:0.5:start=2:stop=4>", 10, [0.0, 0.5, 0.5, 0.0], [1, 2, 3, 4]),
    ("<lora:x:0.5:start=0.5>", 10, [0.0, 0.5], [4, 5]),
]


@pytest.mark.parametrize(("prompt", "total", "weights", "steps"), STEPS)
def test_strength_at_step(prompt: str, total: int, weights: list[float], steps: list[int]) -> None:
    (lora,) = parse(prompt).loras
    assert [lora.unet_at(s, total) for s in steps] == pytest.approx(weights)
    assert [lora.te_at(s, total) for s in steps] == pytest.approx(weights)


def test_hires_and_group_strengths() -> None:
    (lora,) = parse("<lora:x:0.8:hrunet=0.2:in=0.3>").loras
    assert lora.unet_at(0, 10, hires=True) == 0.2 and lora.te_at(0, 10, hires=True) == 0.8
    assert lora.unet_at(0, 10, block="IN04") == 0.3 and lora.unet_at(0, 10, block="OUT03") == 0.8


def test_everything_serialises_to_json() -> None:
    import json

    parsed = parse("<lora:x:inf> <lora:y:0@0,1@1:lbw=MIDD:start=0.5:hr=0.1> <hypernet:h:1>", profile="loraprompt")
    data = json.loads(json.dumps(parsed.to_json()))
    assert data["loras"][0]["unet"]["keyframes"] == [[0.0, 0.0], [1.0, 1.0]]
    assert data["loras"][0]["start"] == {"value": 0.5, "unit": "fraction"}
    assert data["others"][0]["name"] == "h"
    a1111 = json.loads(json.dumps(parse("<lora:x:inf>", profile="a1111").to_json()))
    assert a1111["loras"][0]["te"] == "inf"


@pytest.mark.parametrize(("prompt", "profile"), [(p, prof) for p, _ in EXTENSIONS for prof in ("loraprompt", "a1111")])
def test_activation_from_items_matches_parse(prompt: str, profile: str) -> None:
    from loraprompt.syntax import activation_from_items

    (tag,) = parse(prompt).tags
    activation, diagnostics = activation_from_items(tag.items, tag.kind, profile=profile)  # type: ignore[arg-type]
    parsed = parse(prompt, profile=profile)  # type: ignore[arg-type]
    assert (activation,) == parsed.loras if activation else parsed.loras == ()
    assert [d.code for d in diagnostics] == [d.code for d in parsed.diagnostics if d.code != "a1111-drop-all"]


def test_activation_from_items_rejects_items_that_are_not_one_tag() -> None:
    from loraprompt.syntax import activation_from_items

    with pytest.raises(ValueError, match="do not form one"):
        activation_from_items(["x>y"])


def test_every_emitted_code_is_documented() -> None:
    from loraprompt.syntax.codes import DIAGNOSTIC_CODES

    prompts = [p for p, _, _ in DIAGNOSTICS] + ["<lora:a:1> <lora:a:2>", "x <lora:y:1>:0.5 AND [<lora:z:1>|b] (<lora:w:1>)"]
    for prompt in prompts:
        for profile in ("loraprompt", "a1111"):
            for d in parse(prompt, profile=profile).diagnostics:  # type: ignore[arg-type]
                assert d.code in DIAGNOSTIC_CODES, d
                assert d.severity in DIAGNOSTIC_CODES[d.code][0]
