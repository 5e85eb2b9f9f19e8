"""spec/syntax.md §2.10 and §5: prompt editing, alternation, AND, emphasis, BREAK, and how tags interact."""

from __future__ import annotations

import pytest

from loraprompt.errors import PromptSyntaxError
from loraprompt.syntax import attention, parse, schedules, split_and

ALT10 = [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]

# (text, steps, hires_steps, use_old_scheduling) -> schedule
SCHEDULES = [
    ("test", 10, None, False, [(10, "test")]),
    ("a [b:3]", 10, None, False, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, None, False, [(3, "a "), (10, "a b")]),
    ("a [b:3 ]", 10, None, False, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, None, False, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, None, False, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, None, False, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, None, False, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, None, False, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, None, False, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, None, False, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, None, False, ALT10),
    ("[fe|]male", 4, None, False, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 5, None, False, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
    ("[a:b:c]", 3, None, False, [(3, "[a:b:c]")]),
    # the text of N decides: '1' is step 1, '1.0' is the last step (b never shows)
    ("[a:b:1]", 10, None, False, [(1, "a"), (10, "b")]),
    ("[a:b:1.0]", 10, None, False, [(10, "a")]),
    ("[a:b:0.25]", 10, None, False, [(2, "a"), (10, "b")]),
    ("[a:b:1e1]", 20, None, False, [(10, "a"), (20, "b")]),
    ("[a:b:-3]", 10, None, False, [(10, "b")]),
    ("[a:b:0]", 10, None, False, [(10, "b")]),
    ("[a:b:50]", 10, None, False, [(10, "a")]),
    # past a float's range A1111 stops with OverflowError; here +inf never switches, -inf always has
    ("[a:b:1e400]", 10, None, False, [(10, "a")]),
    ("[a:b:1.5e400]", 10, None, False, [(10, "a")]),
    ("[a:b:-1e400]", 10, None, False, [(10, "b")]),
    ("[a:b:1e400]", 10, 10, False, [(10, "a")]),
    ("[a:b:1e400]", 10, None, True, [(10, "a")]),
    # old scheduling: N < 1 is a fraction, anything else a step
    ("[a:b:1.0]", 10, None, True, [(1, "a"), (10, "b")]),
    ("[a:b:0.5]", 10, None, True, [(5, "a"), (10, "b")]),
    # hires pass: integer N counts both passes, fractional N counts passes
    ("a [b:.5] c", 10, 10, False, [(10, "a b c")]),
    ("a [b:1.5] c", 10, 10, False, [(5, "a  c"), (10, "a b c")]),
    ("[a:b:15]", 10, 20, False, [(5, "a"), (20, "b")]),
    ("[a:b:15]", 10, 20, True, [(10, "a")]),
    # texts the grammar cannot parse are used raw for every step
    ("[a|b:0.5]", 10, None, False, [(10, "[a|b:0.5]")]),
    ("a [{b|d{:.5] c", 10, None, False, [(10, "a [{b|d{:.5] c")]),
    ("[a:b:c:5]", 10, None, False, [(10, "[a:b:c:5]")]),
    ("(a:1.2:3)", 10, None, False, [(10, "(a:1.2:3)")]),
    ("\\[a:b:3\\]", 10, None, False, [(10, "\\[a:b:3\\]")]),
]


@pytest.mark.parametrize(("text", "steps", "hires", "old", "expected"), SCHEDULES)
def test_schedules(text: str, steps: int, hires: int | None, old: bool, expected: list) -> None:
    assert schedules(text, steps, hires_steps=hires, use_old_scheduling=old) == expected


AND = [
    ("a AND b", [("a", 1.0), (" b", 1.0)]),
    ("a:1.5 AND b :-0.5", [("a", 1.5), (" b", -0.5)]),
    ("a : 2 ", [("a", 2.0)]),
    ("a:+.5", [("a", 0.5)]),
    ("a:5.", [("a", 5.0)]),
    ("a ANDc", [("a ANDc", 1.0)]),
    ("a and b", [("a and b", 1.0)]),
    ("  a  ", [("  a", 1.0)]),
    ("a:1.2.3", [("a:1.2.3", 1.0)]),
    ("a\n:0.5", [("a", 0.5)]),
    ("a:0.5:0.7", [("a:0.5", 0.7)]),
    ("AND", [("", 1.0), ("", 1.0)]),
    ("(x:1.2)", [("(x:1.2)", 1.0)]),
]


@pytest.mark.parametrize(("text", "parts"), AND)
def test_split_and(text: str, parts: list) -> None:
    assert split_and(text) == parts


H = 1.1
ATTENTION = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * H * H), (" ", H), ("on", H / H), (" a ", H), ("hill", 0.5 * H),
      (", sun, ", H), ("sky", H * H * H * H), (".", H)]),
    ("[a]", [("a", 1 / 1.1)]),
    ("[[a]] b", [("a", 1 / 1.1 / 1.1), (" b", 1.0)]),
    ("(a:-1)", [("a", -1.0)]),
    ("( a : 1.5 )", [(" a ", 1.5)]),
    ("a)b]c", [("a)b]c", 1.0)]),
    ("a:1.2)", [("a:1.2)", 1.0)]),
    ("a\\b", [("ab", 1.0)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("a\\", [("a", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("a\nBREAK\n b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAKb break", [("aBREAKb break", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ("(a:1.2:3)", [("a:1.2", 3.0)]),
    ("(:0.5)", [("", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize(("text", "runs"), ATTENTION)
def test_attention(text: str, runs: list) -> None:
    got = attention(text)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs], rel=1e-12)


@pytest.mark.parametrize("text", ["(a:1.2.3)", "(a:.)", "x (b:1..2) y"])
def test_attention_bad_weight_raises_like_a1111(text: str) -> None:
    with pytest.raises(PromptSyntaxError) as info:
        attention(text)
    assert isinstance(info.value, ValueError) and info.value.span is not None


# how tag removal interacts with the bracket syntaxes (§2.10, last list)
INTERACTIONS = [
    ("a [<lora:p:1>:<lora:q:1>:0.5] b", "a [::0.5] b", ["p", "q"], {"tag-in-edit"}),
    ("[<lora:p:1>|<lora:q:1>]", "[|]", ["p", "q"], {"tag-in-edit"}),
    ("[cat:dog:<lora:z:1>7]", "[cat:dog:7]", ["z"], {"tag-in-edit"}),
    ("a AND b <lora:z:1>", "a AND b ", ["z"], {"tag-in-and"}),
    ("(<lora:z:1>:0.5)", "(:0.5)", ["z"], {"tag-in-emphasis"}),
    ("photo <lora:z>:0.6", "photo :0.6", ["z"], {"andweight-from-tag"}),
    ("photo <lora:z:0.6", "photo <lora:z:0.6", [], {"andweight-from-tag", "unclosed-tag"}),
    ("a BREAK <lora:z:1> b", "a BREAK  b", ["z"], set()),
]


@pytest.mark.parametrize(("prompt", "text", "names", "codes"), INTERACTIONS)
def test_tags_inside_prompt_syntax(prompt: str, text: str, names: list[str], codes: set[str]) -> None:
    parsed = parse(prompt)
    assert parsed.text == text
    assert [a.name for a in parsed.loras] == names
    assert all(a.te == 1.0 and a.start is None for a in parsed.loras)  # global, every step, written weight
    assert codes <= {d.code for d in parsed.diagnostics}
    assert parse(prompt, profile="a1111").text == text


def test_leftover_edit_skeletons_keep_their_schedules() -> None:
    assert schedules(parse("a [<lora:p:1>:<lora:q:1>:0.5] b").text, 10) == [(5, "a  b"), (10, "a  b")]
    assert schedules(parse("[<lora:p:1>|<lora:q:1>]").text, 3) == [(1, ""), (2, ""), (3, "")]
    assert schedules(parse("[cat:dog:<lora:z:1>7]").text, 10) == [(7, "cat"), (10, "dog")]


def test_leftover_number_becomes_and_weight() -> None:
    assert split_and(parse("photo <lora:z>:0.6").text) == [("photo", 0.6)]
    assert split_and(parse("photo <lora:z:0.6").text) == [("photo <lora:z", 0.6)]


def test_tag_context_frames() -> None:
    parsed = parse("x AND ([a|<lora:p:1>]) [<lora:q:1>:b:3] <lora:r:1>")
    assert [t.context for t in parsed.tags] == [("and:1", "emphasis", "alternation:1/2"), ("and:1", "edit:before:3"),
                                                ("and:1",)]


CONTEXTS = [
    ("[<lora:p:1>:b:0.5]", ("edit:before:0.5",)),
    ("[a:<lora:p:1>b: 7 ]", ("edit:after:7",)),
    ("[<lora:p:1>:3]", ("edit:after:3",)),
    ("[cat:dog:<lora:z:1>7]", ("edit:number:7",)),
    ("[a|b|<lora:p:1>]", ("alternation:2/3",)),
    ("[a:b:c:<lora:p:1>]", ("emphasis",)),
    ("[<lora:p:1>]", ("emphasis",)),
    ("(a:1.2 <lora:p:1>)", ("emphasis",)),
    ("a AND b AND <lora:p:1>", ("and:2",)),
    ("\\[<lora:p:1>\\]", ()),
]


@pytest.mark.parametrize(("prompt", "context"), CONTEXTS)
def test_context_frames(prompt: str, context: tuple[str, ...]) -> None:
    (tag,) = parse(prompt).tags
    assert tag.context == context


# §5: the surprising behaviours, one row each: (number, prompt, a1111 text, a1111 loras, loraprompt loras)
SURPRISES = [
    (1, "<lora:a:1> <lora:b:0,7> <lora:c:1:MIDD>", "  ", [], ["a", "c"]),
    (2, "see <https://x.org> at <12:30> <3:you>", "see  at  ", [], []),
    (3, "<lora:a:0.7, hat, <lora:b:1>", "", [], []),
    (4, "photo <lora:z>:0.6", "photo :0.6", [("z", 1.0, 1.0)], ["z"]),
    (5, "<lora:a:0.4> <lora:a:0.9>", " ", [("a", 0.9, 0.9), ("a", 0.9, 0.9)], ["a", "a"]),
    (6, "<lyco:b:1> <lora:a:1> <lyco:c:1>", "  ", [("b", 1.0, 1.0), ("c", 1.0, 1.0), ("a", 1.0, 1.0)], ["b", "c", "a"]),
    (7, "<lora:a=b:0.7:te=0.3>", "", [("0.7", 0.3, 0.3)], ["0.7"]),
    (8, "<lora:x>", "", [("x", 1.0, 1.0)], ["x"]),
    (9, "<lora:x:1_0> <lora:y:１.５>", " ", [("x", 10.0, 10.0), ("y", 1.5, 1.5)], ["x", "y"]),
    (10, "[a:<lora:x:0.5>b:3]", "[a:b:3]", [("x", 0.5, 0.5)], ["x"]),
    (13, "<lora:char#2:1> <lora:ok:1>", "<lora:char\n", [], []),
    (18, "<lo<lora:p:0.5>ra:q:1>", "<lora:q:1>", [("p", 0.5, 0.5)], ["p"]),
]


@pytest.mark.parametrize(("number", "prompt", "text", "a1111", "ours"), SURPRISES)
def test_surprising_behaviours(number: int, prompt: str, text: str, a1111: list, ours: list[str]) -> None:
    plain = parse(prompt, profile="a1111")
    assert plain.text == text
    assert [(a.name, a.te, a.unet) for a in plain.loras] == a1111
    lenient = parse(prompt)
    assert lenient.text == text
    assert [a.name for a in lenient.loras] == ours


def test_surprise_11_negative_tags_and_12_first_prompt_of_batch() -> None:
    assert parse("<lora:x:1>", profile="a1111", negative=True).text == "<lora:x:1>"
    assert parse_batch_names(["no tags", "<lora:x:1>"]) == []


def parse_batch_names(prompts: list[str]) -> list[str]:
    from loraprompt.syntax import parse_batch

    return [a.name for a in parse_batch(prompts, profile="a1111").loras]


def test_surprise_14_switch_step_text_decides() -> None:
    assert schedules("[a:b:1]", 20) == [(1, "a"), (20, "b")]
    assert schedules("[a:b:1.0]", 20) == [(20, "a")]


def test_surprise_15_one_bad_bracket_disables_every_edit() -> None:
    assert schedules("[a:b:2] [c|d:0.5]", 4) == [(4, "[a:b:2] [c|d:0.5]")]
    assert schedules("[a:b:2] [c|d]", 4)[0] == (1, "a c")


def test_surprise_16_lone_backslash_vanishes_and_escapes_stay_in_names() -> None:
    assert attention("a \\b")[0][0] == "a b"
    assert parse("<lora:\\(x\\):1>").loras[0].name == "\\(x\\)"
