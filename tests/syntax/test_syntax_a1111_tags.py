"""spec/syntax.md §2.2–2.9: A1111 v1.10.1's tag scanning, argument model, LoRA reading and failure mode."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from loraprompt.syntax import LoraActivation, Schedule, format_activation, parse, parse_batch

# §2.2 tag recognition: prompt -> (stripped text, [(type, items)])
RECOGNITION = [
    ("a, <lora:x:1>, b", "a, , b", [("lora", ["x", "1"])]),
    ("<https://example.com>", "", [("https", ["//example.com"])]),
    ("<3:you>", "", [("3", ["you"])]),
    ("<12:30>", "", [("12", ["30"])]),
    ("<LoRA:x:1>", "", [("LoRA", ["x", "1"])]),
    ("<ローラ_2:x>", "", [("ローラ_2", ["x"])]),
    ("<lora:>", "<lora:>", []),
    ("<lora>", "<lora>", []),
    ("<:x:1>", "<:x:1>", []),
    ("< lora:x:1>", "< lora:x:1>", []),
    ("<lora :x:1>", "<lora :x:1>", []),
    ("a <1> b", "a <1> b", []),
    ("<lora:a\nb:1>", "", [("lora", ["a\nb", "1"])]),
    ("<lora:a<b\"#|(x):1>", "", [("lora", ["a<b\"#|(x)", "1"])]),
    ("<lora:\\(x\\):1>", "", [("lora", ["\\(x\\)", "1"])]),
    ("<lora:x:1>>", ">", [("lora", ["x", "1"])]),
    ("<lora:x:1><lyco:y:2>", "", [("lora", ["x", "1"]), ("lyco", ["y", "2"])]),
    ("<lora:a:0.7, hat, <lora:b:1>", "", [("lora", ["a", "0.7, hat, <lora", "b", "1"])]),
    ("hat <lora:a:0.7\nnext line", "hat <lora:a:0.7\nnext line", []),
    ("<lo<lora:p:0.5>ra:q:1>", "<lora:q:1>", [("lora", ["p", "0.5"])]),
]


@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
@pytest.mark.parametrize(("prompt", "text", "tags"), RECOGNITION)
def test_tag_recognition(prompt: str, text: str, tags: list, profile: str) -> None:
    parsed = parse(prompt, profile=profile, comments=False)  # type: ignore[arg-type]
    assert parsed.text == text
    assert [(t.kind, list(t.items)) for t in parsed.tags] == tags
    for t in parsed.tags:
        assert parsed.source[t.span[0]:t.span[1]] == t.raw


# §2.3 argument model: args -> (positional, named)
ARGUMENTS = [
    ("x:1:2", ["x", "1", "2"], {}),
    ("=0.5:x", ["x"], {"": "0.5"}),
    ("x:te=", ["x"], {"te": ""}),
    ("x:te=1=2", ["x", "te=1=2"], {}),
    ("te=1:foo", ["foo"], {"te": "1"}),
    ("a=b:0.7", ["0.7"], {"a": "b"}),
    ("x:te=1:te=2", ["x"], {"te": "2"}),
    ("x: te =0.2", ["x"], {" te ": "0.2"}),
    ("C:\\loras\\x:1", ["C", "\\loras\\x", "1"], {}),
]


@pytest.mark.parametrize(("args", "positional", "named"), ARGUMENTS)
def test_argument_model(args: str, positional: list[str], named: dict[str, str]) -> None:
    (tag,) = parse(f"<lora:{args}>", profile="a1111").tags
    assert list(tag.positional) == positional
    assert dict(tag.named) == named
    assert list(tag.items) == args.split(":")


# §2.4 LoRA interpretation: one tag -> (name, te, unet, dyn); None when A1111 raises (drops all)
INTERPRETATION = [
    ("<lora:x>", ("x", 1.0, 1.0, None)),
    ("<lora:x:0.5>", ("x", 0.5, 0.5, None)),
    ("<lora:x:0.5:0.7>", ("x", 0.5, 0.7, None)),
    ("<lora:x:0.5:0.7:8>", ("x", 0.5, 0.7, 8)),
    ("<lora:y:0.6:te=0.3>", ("y", 0.3, 0.3, None)),
    ("<lora:y:0.6:0.9:te=0.3>", ("y", 0.3, 0.9, None)),
    ("<lora:y:unet=0.2>", ("y", 1.0, 0.2, None)),
    ("<lora:x:1:1:-4>", ("x", 1.0, 1.0, -4)),
    ("<lora:x:1:1:dyn=16>", ("x", 1.0, 1.0, 16)),
    ("<lora:x:1:1:1:extra:more>", ("x", 1.0, 1.0, 1)),
    ("<lora:x:0.5:lbw=MIDD:start=3:hr=0.2:in=0:foo=bar>", ("x", 0.5, 0.5, None)),
    ("<lora:x: te =0.2>", ("x", 1.0, 1.0, None)),
    ("<lora:TE=0.2:x>", ("x", 1.0, 1.0, None)),
    ("<lora:te=0.5:x>", ("x", 0.5, 0.5, None)),
    ("<lora:a=b:0.7>", ("0.7", 1.0, 1.0, None)),
    ("<lora:x:0>", ("x", 0.0, 0.0, None)),
    ("<lora:x:-1.5>", ("x", -1.5, -1.5, None)),
    ("<lora:my lora:1>", ("my lora", 1.0, 1.0, None)),
    ("<lora: x :1>", (" x ", 1.0, 1.0, None)),
    # Python float() decides what a number is
    ("<lora:x: 0.5 >", ("x", 0.5, 0.5, None)),
    ("<lora:x:\t0.5\n>", ("x", 0.5, 0.5, None)),
    ("<lora:x:\u00a00.5>", ("x", 0.5, 0.5, None)),
    ("<lora:x:+1.2>", ("x", 1.2, 1.2, None)),
    ("<lora:x:.5>", ("x", 0.5, 0.5, None)),
    ("<lora:x:5.>", ("x", 5.0, 5.0, None)),
    ("<lora:x:1e-1>", ("x", 0.1, 0.1, None)),
    ("<lora:x:007>", ("x", 7.0, 7.0, None)),
    ("<lora:x:1_0>", ("x", 10.0, 10.0, None)),
    ("<lora:x:inf>", ("x", math.inf, math.inf, None)),
    ("<lora:x:１.５>", ("x", 1.5, 1.5, None)),
    ("<lora:x:٣>", ("x", 3.0, 3.0, None)),
    # rejected: A1111 raises, which drops every LoRA
    ("<lora:x:0,8>", None),
    ("<lora:x:0x10>", None),
    ("<lora:x:(0.5)>", None),
    ("<lora:x:1.0.0>", None),
    ("<lora:x:>", None),
    ("<lora:x:abc>", None),
    ("<lora:x:te=>", None),
    ("<lora:x:te=1=2>", None),
    ("<lora:x:1:1:64.0>", None),
    ("<lora:x:1:MIDD>", None),
    ("<lora:x:0@0,1@0.5>", None),
    ("<lora:x:high>", None),
    ("<lora:C:\\x:1>", None),
    ("<lora:te=1>", None),
    ("<lora:x:abc:te=0.5>", None),
]


@pytest.mark.parametrize(("prompt", "expected"), INTERPRETATION)
def test_a1111_interpretation(prompt: str, expected: tuple | None) -> None:
    parsed = parse(f"a <lora:other:0.3> {prompt}", profile="a1111")
    if expected is None:
        assert parsed.a1111_drop_all and parsed.loras == ()
        assert "a1111-drop-all" in [d.code for d in parsed.diagnostics]
        assert any(d.severity == "error" and d.span == parsed.tags[1].span for d in parsed.diagnostics)
    else:
        assert not parsed.a1111_drop_all
        other, lora = parsed.loras
        assert (other.name, other.te) == ("other", 0.3)
        assert (lora.name, lora.te, lora.unet, lora.dyn) == expected


def test_a1111_nan_passes_through() -> None:
    (lora,) = parse("<lora:x:nan>", profile="a1111").loras
    assert math.isnan(lora.te) and math.isnan(lora.unet)  # type: ignore[arg-type]



NAN = float("nan")


@pytest.mark.parametrize("style", ["a1111", "loractl"])
def test_a1111_nan_is_written_in_the_short_form_and_reads_back(style: str) -> None:
    """format_activation compared te == unet, and nan != nan: a NaN strength came out as
    <lora:x:nan:nan>. Equal strengths are written once, NaN included, and read back the same."""
    (lora,) = parse("<lora:x:nan>", profile="a1111").loras
    tag = format_activation(lora, style=style)  # type: ignore[arg-type]
    assert tag == "<lora:x:nan>"
    (back,) = parse(tag, profile="a1111").loras
    assert math.isnan(back.te) and math.isnan(back.unet)  # type: ignore[arg-type]
    assert replace(back, te=0.0, unet=0.0) == replace(lora, te=0.0, unet=0.0)


@pytest.mark.parametrize(("activation", "style", "tag"), [
    (LoraActivation("x", 1.0, 1.0, hr_te=NAN, hr_unet=float("nan")), "a1111", "<lora:x:1:hr=nan>"),
    (LoraActivation("x", Schedule(((0.0, NAN), (1.0, 1.0))), Schedule(((0.0, float("nan")), (1.0, 1.0)))), "a1111",
     "<lora:x:nan:sched=nan@0,1@1>"),
    (LoraActivation("x", Schedule(((0.0, NAN), (1.0, 1.0))), Schedule(((0.0, float("nan")), (1.0, 1.0)))), "loractl",
     "<lora:x:nan@0,1@1>"),
    (LoraActivation("x", 1.0, NAN), "a1111", "<lora:x:1:nan>"),
    (LoraActivation("x", 0.0, -0.0), "a1111", "<lora:x:0>"),
])
def test_equal_nan_strengths_are_written_once_like_equal_numbers(activation: LoraActivation, style: str, tag: str) -> None:
    """hr_te/hr_unet and te/unet schedules holding NaN were written twice (hrte=nan:hrunet=nan,
    te_sched=...:unet_sched=...); unequal and signed-zero strengths are written as before."""
    assert format_activation(activation, style=style) == tag  # type: ignore[arg-type]

# §2.5 order of application: lora tags, then lyco tags (by first-seen type), not text order
ORDER = [
    ("<lora:a:1> <lyco:b:1> <lora:c:1>", ["a", "c", "b"]),
    ("<lyco:b:1> <lora:a:1> <lyco:c:1>", ["b", "c", "a"]),
    ("<hypernet:h:1> <lora:a:1> <foo:z> <lyco:b:1>", ["a", "b"]),
]


@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
@pytest.mark.parametrize(("prompt", "names"), ORDER)
def test_application_order(prompt: str, names: list[str], profile: str) -> None:
    assert [a.name for a in parse(prompt, profile=profile).loras] == names  # type: ignore[arg-type]


def test_one_bad_tag_drops_all_in_a1111_but_only_itself_in_loraprompt() -> None:
    prompt = "<lora:a:1> <lora:b:0,7> <lyco:c:0.5> <hypernet:h:1>"
    a1111 = parse(prompt, profile="a1111")
    assert a1111.loras == () and a1111.a1111_drop_all
    assert [o.name for o in a1111.others] == ["h"]  # hypernetworks are unaffected
    ours = parse(prompt)
    assert [a.name for a in ours.loras] == ["a", "c"] and not ours.a1111_drop_all
    bad = [d for d in ours.diagnostics if d.code == "weight-syntax"]
    assert bad[0].span == ours.tags[1].span and "decimal separator is '.'" in bad[0].message
    assert [d.severity for d in ours.diagnostics if d.code == "a1111-drop-all"] == ["info"]


# A1111's hypernet handler names the network by params.items[0] and reads its multiplier from items[1]:
# an item with one '=' is still the name (it is also a named argument, as A1111's params.named has it)
HYPERNET_NAMES = [
    ("<hypernet:h:0.5>", "h"),
    ("<hypernet:a=b:0.5>", "a=b"),
    ("<hypernet:x=1>", "x=1"),
    ("<hypernet:h>", "h"),  # (an empty <hypernet:> is no tag at all, as in A1111)
]


@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
@pytest.mark.parametrize(("prompt", "name"), HYPERNET_NAMES)
def test_hypernet_name_is_first_item(prompt: str, name: str, profile: str) -> None:
    (other,) = parse(prompt, profile=profile).others  # type: ignore[arg-type]
    assert (other.kind, other.name) == ("hypernet", name)


# §2.7 duplicates: same mentioned name -> every occurrence at the last weights (count x last)
@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
def test_duplicates_a1111_effect(profile: str) -> None:
    parsed = parse("<lora:a:0.4> <lora:a:0.9:0.8> <lora:A:0.5>", profile=profile)  # type: ignore[arg-type]
    assert [(a.name, a.te, a.unet) for a in parsed.loras] == [("a", 0.9, 0.8), ("a", 0.9, 0.8), ("A", 0.5, 0.5)]
    (dup,) = [d for d in parsed.diagnostics if d.code == "duplicate"]
    assert dup.subject == "a" and dup.data["count"] == 2 and "2 x last" in dup.message


DUPLICATE_POLICIES = [
    ("sum", [("a", 1.3, 1.3)]),
    ("last", [("a", 0.9, 0.9)]),
    ("first", [("a", 0.4, 0.4)]),
    ("error", []),
]


@pytest.mark.parametrize(("policy", "loras"), DUPLICATE_POLICIES)
def test_duplicate_policies(policy: str, loras: list) -> None:
    parsed = parse("<lora:a:0.4> <lora:a:0.9>", duplicates=policy)  # type: ignore[arg-type]
    assert [(a.name, round(a.te, 9), round(a.unet, 9)) for a in parsed.loras] == loras  # type: ignore[arg-type]


# §2.8 negative prompts, batches
@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
def test_negative_prompt_tags_stay_text(profile: str) -> None:
    parsed = parse("blurry, <lora:bad:1>", profile=profile, negative=True)  # type: ignore[arg-type]
    assert parsed.text == "blurry, <lora:bad:1>" and parsed.loras == ()
    assert [d.code for d in parsed.diagnostics] == ["tag-in-negative"]


def test_negative_prompt_strip_option() -> None:
    parsed = parse("blurry, <lora:bad:1>", negative=True, negative_tags="strip")
    assert parsed.text == "blurry, " and parsed.loras == ()


@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
def test_batch_uses_first_prompt_loras(profile: str) -> None:
    batch = parse_batch(["plain", "b <lora:x:1>", "c <lora:y:1>"], profile=profile)  # type: ignore[arg-type]
    assert batch.texts == ["plain", "b ", "c "]
    assert batch.loras == ()
    assert [d.data["prompt"] for d in batch.diagnostics if d.code == "batch-divergent"] == [1, 2]


def test_batch_first_prompt_failure_drops_batch_in_a1111() -> None:
    batch = parse_batch(["<lora:x:0,5> <lora:y:1>", "<lora:y:1>"], profile="a1111")
    assert batch.loras == () and batch.prompts[0].a1111_drop_all


# §2.9 comments: '#' to end of line, before tags are parsed; the line break is kept
COMMENTS = [
    ("a # b", "a \n", []),
    ("a # b\nc", "a \nc", []),
    ("x\n# whole line\ny <lora:z:1>", "x\ny ", ["z"]),
    ("# first line\nz", "\nz", []),
    ("#a\n#b\n", "\n\n", []),
    ("<lora:char#2:1>", "<lora:char\n", []),
    ("red #ff0000, dress <lora:x:1>", "red \n", []),
    ("<lora:x:1> # <lora:y:1>", " \n", ["x"]),
]


@pytest.mark.parametrize("profile", ["a1111", "loraprompt"])
@pytest.mark.parametrize(("prompt", "text", "names"), COMMENTS)
def test_comments(prompt: str, text: str, names: list[str], profile: str) -> None:
    parsed = parse(prompt, profile=profile)  # type: ignore[arg-type]
    assert parsed.text == text
    assert [a.name for a in parsed.loras] == names


def test_comments_off_keeps_hash() -> None:
    assert parse("<lora:char#2:1> a # b", comments=False).loras[0].name == "char#2"


def test_comment_inside_tag_is_reported_with_original_position() -> None:
    parsed = parse("a <lora:char#2:1>")
    (diag,) = [d for d in parsed.diagnostics if d.code == "comment-in-tag"]
    assert diag.data["original_span"][0] == 12


def test_spans_map_back_through_comment_stripping() -> None:
    prompt = "# note\nhat <lora:x:1> # trailing\n<lyco:y:2>"
    parsed = parse(prompt)
    for tag in parsed.tags:
        start, end = parsed.original_span(tag.span)
        assert prompt[start:end] == tag.raw
