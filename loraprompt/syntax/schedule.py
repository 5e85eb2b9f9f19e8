"""A1111's prompt editing ``[a:b:N]`` and alternation ``[a|b]``: ``schedules(text, steps)``.

The grammar has the same shape as A1111's (lark Earley, default options), because its ambiguity
resolution decides results on odd inputs; the evaluation below is loraprompt's own.

On lark 1.1.2 (A1111's pin) that resolution is not even stable between processes: it follows the
order of hashed sets (lark issue #1434), so ``photo, [cat:dog:0.5]]`` is a schedule or plain text
depending on PYTHONHASHSEED, in A1111 as here. Inside A1111 both parse with the same lark in the same
process and agree; lark 1.2.1 and later always give the schedule
(tests/syntax/test_syntax_lark_determinism.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import lark

GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
           | "(" prompt ":" prompt ")"
           | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR)


def _switch_step(number: str, steps: int, hires: bool, use_old_scheduling: bool, base_steps: int) -> int:
    """Where ``[a:b:N]`` switches, in A1111's arithmetic (the text of N decides fraction or step)."""
    value = float(number)
    if use_old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in number:
        value = (value - (1.0 if hires else 0.0)) * steps
    else:
        value = value - (base_steps if hires else 0)
    if math.isinf(value):  # 1e400: A1111 fails the generation (OverflowError); here it never switches
        return steps if value > 0 else 0
    return min(steps, int(value))


def _compile(node: Any, switch_at: Callable[[str], int], steps: int, bounds: set[int]) -> Any:
    """Turn the lark tree into nested tuples: ("text", s) | ("seq", parts) | ("switch", before, after, n)
    | ("alt", options); collect the schedule boundaries on the way."""
    if isinstance(node, lark.Token):
        return ("text", str(node))
    if node is None:
        return ("seq", ())
    if node.data == "plain":
        return ("text", str(node.children[0]))
    if node.data == "scheduled":
        before, after, _, number, _ = node.children
        when = switch_at(str(number))
        if when >= 1:
            bounds.add(when)
        return ("switch", _compile(before, switch_at, steps, bounds),
                _compile(after, switch_at, steps, bounds), when)
    if node.data == "alternate":
        bounds.update(range(1, steps + 1))
        return ("alt", tuple(_compile(c, switch_at, steps, bounds) for c in node.children))
    return ("seq", tuple(_compile(c, switch_at, steps, bounds) for c in node.children))


def _render(node: Any, step: int, out: list[str]) -> None:
    kind = node[0]
    if kind == "text":
        out.append(node[1])
    elif kind == "seq":
        for child in node[1]:
            _render(child, step, out)
    elif kind == "switch":
        _render(node[1] if step <= node[3] else node[2], step, out)
    else:
        _render(node[1][(step - 1) % len(node[1])], step, out)


def schedules(text: str, steps: int, hires_steps: int | None = None,
              use_old_scheduling: bool = False) -> list[tuple[int, str]]:
    """The prompt's schedule as ``[(end_step, text)]``: ``text`` is used while step <= end_step.

    With ``hires_steps`` (and new scheduling) the schedule is for the hires pass: integer N counts
    steps over both passes and fractional N counts passes. Unparseable text is used for every step.

    >>> schedules("a [b:c:3] d", 10)
    [(3, 'a b d'), (10, 'a c d')]
    >>> schedules("[fe|]male", 4)
    [(1, 'female'), (2, 'male'), (3, 'female'), (4, 'male')]
    >>> schedules("a [b:1.5] c", 10, hires_steps=10)
    [(5, 'a  c'), (10, 'a b c')]
    >>> schedules("[a|b:0.5]", 10)
    [(10, '[a|b:0.5]')]
    """
    hires = hires_steps is not None and not use_old_scheduling
    pass_steps = hires_steps if hires and hires_steps is not None else steps
    try:
        tree = _parser().parse(text)
    except lark.exceptions.LarkError:
        return [(pass_steps, text)]
    bounds = {pass_steps}
    program = _compile(tree, lambda n: _switch_step(n, pass_steps, hires, use_old_scheduling, steps), pass_steps, bounds)
    result = []
    for step in sorted(bounds):
        out: list[str] = []
        _render(program, step, out)
        result.append((step, "".join(out)))
    return result
