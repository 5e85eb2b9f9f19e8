"""A1111's composable ``AND`` split and emphasis parser (``(a:1.2)``, ``[a]``, escapes, ``BREAK``)."""

from __future__ import annotations

import re

from loraprompt.errors import PromptSyntaxError

AND_RE = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_TOKEN = re.compile(r"""
\\[()\[\]\\]?          # an escape; a lone backslash escapes nothing and vanishes
| [(\[]                 # openers
| :\s*([+-]?[.\d]+)\s*\)  # ':w)' closes a round group with weight w
| [)\]]                 # closers
| [^\\()\[\]:]+         # text
| :                     # a colon that closes nothing
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND = 1.1
SQUARE = 1 / 1.1


def split_and(text: str) -> list[tuple[str, float]]:
    """Split a positive prompt on ``AND`` into ``(text, weight)`` parts; ``:w`` at a part's end is its weight.

    >>> split_and("a cat :1.2 AND a dog AND ANDroid:-0.5")
    [('a cat', 1.2), (' a dog', 1.0), (' ANDroid', -0.5)]
    """
    parts = []
    for part in AND_RE.split(text):
        m = _PART_WEIGHT.search(part)
        if m is None:
            parts.append((part, 1.0))
        else:
            parts.append((m.group(1), float(m.group(2)) if m.group(2) is not None else 1.0))
    return parts


def attention(text: str) -> list[tuple[str, float]]:
    """Emphasis as A1111 reads it: runs of text with their weights; ``BREAK`` is ``("BREAK", -1.0)``.

    Raises ``PromptSyntaxError`` (a ValueError, as A1111 raises) for a weight like ``(a:1.2.3)``.

    >>> attention("a (b:1.5) [c] \\\\(d\\\\) BREAK e")
    [('a ', 1.0), ('b', 1.5), (' ', 1.0), ('c', 0.9090909090909091), (' (d)', 1.0), ('BREAK', -1.0), ('e', 1.0)]
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                raise PromptSyntaxError(f"emphasis weight {weight!r} at {m.start(1)} is not a number",
                                        (m.start(1), m.end(1))) from None
            scale(round_open.pop(), factor)
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    res.append(["BREAK", -1.0])
                res.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    if not res:
        res = [["", 1.0]]
    merged: list[list] = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(t, w) for t, w in merged]
