"""A1111's orders: its natural sort key and the order its walk lists files in."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraprompt.library.entry import Entry

_DIGITS = re.compile(r"([0-9]+)")  # A1111's regex: ASCII digits only (`\d` would take other scripts' digits)


def _number(match: re.Match[str]) -> str:
    digits = str(int(match.group()))
    return "\0" + chr(len(digits)) + digits


def natural_key(text: str) -> str:
    """Sort key that orders `lora2` before `lora10`, case-insensitively: A1111's `natural_sort_key`
    (modules/util.py: the text split on runs of ASCII digits, compared as integers, the other
    runs lower-cased with `str.lower`) as one string, which sorts 100,000 paths several times
    faster than lists do. A digit run becomes NUL, its length and its digits: NUL sorts below any
    character of a name, as the end of a shorter run does in A1111's list comparison, and length
    then digits order integers."""
    return _DIGITS.sub(_number, text.lower())


def walk_key(folder: str, filename: str) -> str:
    """Sort key of A1111's walk order (modules/util.py `walk_files`): the folders by the natural
    key of their path, then each folder's files by theirs; so a folder's own files come before its
    subfolders' and the folders go `a/`, `a1/`, `a/b/` (the text before a digit run ends there,
    so it sorts first). `folder` is relative to the root (every
    path has the root in front: the same order). NUL NUL ends the folder's key: it sorts below any
    continuation of a longer folder's (a digit run starts NUL, then its length, never 0)."""
    return natural_key(folder) + "\0\0" + natural_key(filename)


def entry_key(entry: Entry) -> str:
    """`walk_key` of an entry."""
    return walk_key(entry.folder, entry.relpath[entry.relpath.rfind("/") + 1 :])
