"""Where removed tags sat in the prompt's own syntax (brackets, AND parts), and traps around them."""

from __future__ import annotations

import re

from loraprompt.syntax.scanner import OPEN_TAG_RE

AND_RE = re.compile(r"\bAND\b")
_BRACKET = re.compile(r"\\.|[()\[\]]", re.S)
_SIGNED_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INNER = re.compile(r"\\.|[()\[\]|:]", re.S)
AND_WEIGHT_RE = re.compile(r":\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*$")


def bracket_groups(text: str) -> list[tuple[int, int, str]]:
    """``(open, close, kind)`` for every ``(``/``[`` group; kind is edit, alternation or emphasis.

    Closers pair with the nearest opener of their own shape, as A1111's attention parser does;
    an unclosed group runs to the end of the text. Backslash escapes are skipped.

    >>> bracket_groups("a [b:c:3] (d) [e|f]")
    [(2, 8, 'edit'), (10, 12, 'emphasis'), (14, 18, 'alternation')]
    """
    return sorted((o, c, _kind(text, o, c).split(":")[0] if ch == "[" else "emphasis") for o, c, ch in _pairs(text))


def _pairs(text: str) -> list[tuple[int, int, str]]:
    opened: list[tuple[int, str]] = []
    groups: list[tuple[int, int, str]] = []
    for m in _BRACKET.finditer(text):
        ch, i = m.group(), m.start()
        if ch in "([":
            opened.append((i, ch))
        elif ch in ")]":
            want = "(" if ch == ")" else "["
            for k in range(len(opened) - 1, -1, -1):
                if opened[k][1] == want:
                    groups.append((opened.pop(k)[0], i, want))
                    break
    groups.extend((pos, len(text), ch) for pos, ch in opened)
    return groups


def _kind(text: str, open_at: int, close_at: int, cut: int = -1) -> str:
    """The frame of a ``[...]`` group, for a tag removed at ``cut``: ``edit:BRANCH:N``,
    ``alternation:I/K`` or ``emphasis`` (BRANCH is before, after, or number for the switch value)."""
    depth = 0
    colons: list[int] = []
    bars: list[int] = []
    for m in _INNER.finditer(text, open_at + 1, close_at):
        ch = m.group()
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in ":|":
            (colons if ch == ":" else bars).append(m.start())
    where = close_at if cut < 0 else cut
    if bars:
        return f"alternation:{sum(b < where for b in bars)}/{len(bars) + 1}"
    number = text[colons[-1] + 1:close_at].strip() if colons else ""
    if 1 <= len(colons) <= 2 and _SIGNED_NUMBER.fullmatch(number):
        branches = ["after", "number"] if len(colons) == 1 else ["before", "after", "number"]
        return f"edit:{branches[sum(c < where for c in colons)]}:{number}"
    return "emphasis"


def contexts(text: str, cuts: list[int]) -> list[tuple[str, ...]]:
    """For each cut position (where a tag was removed), the enclosing syntax, outermost first.

    >>> contexts("x AND ([a|]) (b) [:c:3]", [10, 14, 18])
    [('and:1', 'emphasis', 'alternation:1/2'), ('and:1', 'emphasis'), ('and:1', 'edit:before:3')]
    """
    if not cuts:
        return []
    ands = [m.end() for m in AND_RE.finditer(text)] if "AND" in text else []
    pairs = sorted(_pairs(text)) if ("[" in text or "(" in text) else []
    out: list[tuple[str, ...]] = []
    for cut in cuts:
        part = sum(end <= cut for end in ands)
        frames: list[str] = [f"and:{part}"] if part else []
        frames.extend(_kind(text, o, c, cut) if ch == "[" else "emphasis" for o, c, ch in pairs if o < cut <= c)
        out.append(tuple(frames))
    return out


def and_weight_traps(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    """Spans (in ``text``) of AND weights that sit right after a removed tag or an unclosed tag."""
    traps: list[tuple[int, int]] = []
    start = 0
    bounds = [(m.start(), m.end()) for m in AND_RE.finditer(text)] if "AND" in text else []
    bounds.append((len(text), len(text)))
    for and_start, and_end in bounds:
        part = text[start:and_start]
        m = AND_WEIGHT_RE.search(part) if ":" in part else None
        if m is not None:
            colon = start + m.start()
            gap = start + len(part[:m.start()].rstrip())
            after_tag = any(gap <= cut <= colon for cut in cuts)
            opener = [o for o in OPEN_TAG_RE.finditer(part, 0, colon - start) if ">" not in part[o.end():colon - start]]
            if after_tag or opener:
                traps.append((colon, start + m.end()))
        start = and_end
    return traps
