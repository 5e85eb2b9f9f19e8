"""Comment stripping and tag scanning with A1111's exact boundaries (standard library only)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from loraprompt.syntax.model import Tag

# A1111: `<`, a type of Unicode word characters, `:`, args of anything but `>`, then `>`.
TAG_RE = re.compile(r"<(\w+):([^>]+)>")
OPEN_TAG_RE = re.compile(r"<\w+:")
_WHOLE_LINE_COMMENT = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_INLINE_COMMENT = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> tuple[str, tuple[int, ...] | None, list[tuple[int, int]]]:
    """A1111's comment stripping (``#`` to end of line, line break kept) with an index map.

    Returns the stripped text, ``origin`` (for each character of the result, and one past the end,
    its index in ``text``; None when nothing was removed) and the removed comment spans in ``text``.

    >>> strip_comments("a # b")[0], strip_comments("x\\n# note\\ny")[0], strip_comments("#a\\n#b\\n")[0]
    ('a \\n', 'x\\ny', '\\n\\n')
    """
    if "#" not in text:
        return text, None, []
    origin = list(range(len(text) + 1))
    comments: list[tuple[int, int]] = []
    for pattern in (_WHOLE_LINE_COMMENT, _INLINE_COMMENT):
        pieces: list[str] = []
        mapped: list[int] = []
        last = 0
        for m in pattern.finditer(text):
            pieces.append(text[last:m.start()])
            mapped.extend(origin[last:m.start()])
            pieces.append("\n")
            mapped.append(origin[m.start()])
            hash_at = text.index("#", m.start())
            comments.append((origin[hash_at], origin[m.end() - 1] + 1 if m.end() > hash_at else origin[hash_at]))
            last = m.end()
        pieces.append(text[last:])
        mapped.extend(origin[last:])
        text, origin = "".join(pieces), mapped
    return text, tuple(origin), comments


def split_items(args: str) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """A1111's argument model: items split on every ``:``; exactly one ``=`` makes a named item.

    >>> split_items("te=1:foo:a=b=c")
    (('te=1', 'foo', 'a=b=c'), ('foo', 'a=b=c'), {'te': '1'})
    """
    items = tuple(args.split(":"))
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return items, tuple(positional), named


def scan(source: str) -> tuple[str, list[Tag]]:
    """Remove every tag in one leftmost, non-overlapping pass; return the text and the tags.

    >>> text, tags = scan("a, <lora:x:1>, b <https://example.com>")
    >>> text, [(t.kind, t.items) for t in tags]
    ('a, , b ', [('lora', ('x', '1')), ('https', ('//example.com',))])
    """
    if "<" not in source:
        return source, []
    pieces: list[str] = []
    tags: list[Tag] = []
    last = 0
    for index, m in enumerate(TAG_RE.finditer(source)):
        pieces.append(source[last:m.start()])
        items, positional, named = split_items(m.group(2))
        tags.append(Tag(m.group(1), m.group(0), (m.start(), m.end()), items, positional, named, index))
        last = m.end()
    if not tags:
        return source, []
    pieces.append(source[last:])
    return "".join(pieces), tags


def unclosed_openers(text: str) -> Iterator[re.Match[str]]:
    """``<word:`` openers left in stripped text: tags that never closed (or had empty args)."""
    for m in OPEN_TAG_RE.finditer(text):
        if not text.startswith(">", m.end()):
            yield m
