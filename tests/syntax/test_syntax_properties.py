"""Hypothesis properties: lenient parsing never raises, spans and text agree, the printer round-trips."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraprompt.syntax import LoraActivation, Schedule, StepPoint, format_activation, parse
from loraprompt.syntax.interpret import KNOWN_KEYS
from loraprompt.syntax.values import LBW_PRESETS, parse_block_vector

FRAGMENTS = ["<lora:", "<lyco:", "<hypernet:", "<LoRA:", "<x:", ">", ":", "=", "te=", "unet=", "dyn=", "lbw=",
             "start=", "0.5", "1", "-2", "0,8", "@", ",", "MIDD", "high", "#", "\n", " ", "[", "]", "(", ")", "|",
             "AND", "BREAK", "\\", "name", "é", "１", "inf", "nan"]
PROMPTS = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=30).map("".join)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(PROMPTS, st.booleans(), st.booleans())
def test_lenient_parse_never_raises_and_spans_agree(prompt: str, comments: bool, negative: bool) -> None:
    ours = parse(prompt, comments=comments, negative=negative)
    plain = parse(prompt, profile="a1111", comments=comments, negative=negative)
    assert ours.source == plain.source
    if not negative:
        assert ours.text == plain.text  # invariant I1: the same text in every profile
    assert [(t.kind, t.items, t.span) for t in ours.tags] == [(t.kind, t.items, t.span) for t in plain.tags]  # I2
    rebuilt, last = [], 0
    for tag in ours.tags:
        start, end = tag.span
        assert ours.source[start:end] == tag.raw
        rebuilt.append(ours.source[last:start])
        last = end
        o_start, o_end = ours.original_span(tag.span)
        if "#" not in prompt[o_start:o_end]:  # else a comment removed inside the tag lies in between
            assert prompt[o_start:o_end] == tag.raw
    rebuilt.append(ours.source[last:])
    stripped = parse(prompt, comments=comments)
    assert stripped.text == "".join(rebuilt)
    for a in ours.loras:
        assert a.span is not None and ours.source[a.span[0]:a.span[1]] == ours.tags[a.tag_index or 0].raw


SAFE = st.characters(blacklist_characters=":>=#", blacklist_categories=("Cs",))
NAMES = st.text(SAFE, min_size=1, max_size=12).filter(lambda s: s.strip() != "")
FLOATS = st.floats(-1e6, 1e6, allow_nan=False)  # realistic strengths; interpolation stays finite
SCHEDULES = st.lists(st.tuples(st.floats(-5, 40, allow_nan=False), FLOATS), min_size=1, max_size=4).map(
    lambda kfs: Schedule(tuple(sorted(kfs, key=lambda kf: kf[0]))))
STRENGTHS = st.one_of(FLOATS, SCHEDULES)
STEPS = st.one_of(st.integers(0, 200).map(lambda v: StepPoint(float(v), False)),
                  st.floats(0, 1, allow_nan=False).map(lambda v: StepPoint(v, True)))
KEYS = st.text(SAFE, max_size=6).filter(lambda k: k not in KNOWN_KEYS)


@st.composite
def activations(draw: st.DrawFn) -> LoraActivation:
    te = draw(STRENGTHS)
    lbw = draw(st.one_of(st.none(), st.sampled_from(sorted(LBW_PRESETS))))
    groups = {} if lbw else draw(st.dictionaries(st.sampled_from(["in", "mid", "out"]), FLOATS))
    return LoraActivation(
        name=draw(NAMES), te=te, unet=draw(st.one_of(st.just(te), STRENGTHS)),
        dyn=draw(st.one_of(st.none(), st.integers(-8, 512))), kind=draw(st.sampled_from(["lora", "lyco"])),
        start=draw(st.one_of(st.none(), STEPS)), stop=draw(st.one_of(st.none(), STEPS)), lbw=lbw,
        blocks=parse_block_vector(lbw, None) if lbw else {}, x=draw(st.one_of(st.none(), FLOATS)),
        hr_te=draw(st.one_of(st.none(), STRENGTHS)), hr_unet=draw(st.one_of(st.none(), STRENGTHS)), groups=groups,
        module=draw(st.one_of(st.none(), st.text(SAFE, max_size=5))),
        hash=draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=12, max_size=12))),
        flags=tuple(draw(st.lists(st.sampled_from(["high", "low"]), max_size=1))),
        extras=draw(st.dictionaries(KEYS, st.text(SAFE, max_size=5), max_size=2)),
    )


@SETTINGS
@given(activations(), st.sampled_from(["a1111", "loractl"]))
def test_format_then_parse_round_trips(activation: LoraActivation, style: str) -> None:
    tag = format_activation(activation, style=style)  # type: ignore[arg-type]
    parsed = parse(f"a {tag} b")
    assert parsed.text == "a  b"
    assert parsed.loras == (activation,), (tag, parsed.diagnostics)
    assert not parsed.errors


@SETTINGS
@given(activations())
def test_a1111_safe_format_never_makes_a1111_fail(activation: LoraActivation) -> None:
    plain = parse(format_activation(activation), profile="a1111")
    assert plain.a1111_drop_all == bool(activation.flags)


@pytest.mark.parametrize(("field", "value"), [("name", "a:b"), ("name", "a>b"), ("name", "a=b"), ("name", "C#odd"),
                                              ("name", " "), ("name", ""), ("module", "x=y"), ("extras", {"k": "v:w"}), ("extras", {"k": "v=w"}),
                                              ("extras", {"a=b": "v"})])
def test_format_refuses_what_no_tag_can_carry(field: str, value: object) -> None:
    activation = LoraActivation(**{"name": "ok", "te": 1.0, "unet": 1.0, field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cannot carry it|is blank"):
        format_activation(activation)


@pytest.mark.parametrize("name", ["a==b", "x = y = z", "é１", " a "])
def test_format_keeps_names_a_tag_can_carry(name: str) -> None:
    activation = LoraActivation(name, 0.5, 0.5)
    assert parse(f"a {format_activation(activation)} b").loras == (activation,)


@SETTINGS
@given(st.text(min_size=0, max_size=8), st.sampled_from(["a1111", "loractl"]))
def test_format_any_name_round_trips_or_refuses(name: str, style: str) -> None:
    activation = LoraActivation(name, 0.5, 0.5)
    try:
        tag = format_activation(activation, style=style)  # type: ignore[arg-type]
    except ValueError as exc:
        assert "cannot carry it" in str(exc) or "is blank" in str(exc)
        return
    assert parse(f"a {tag} b").loras == (activation,), tag
