"""What a card click does to the prompt: add the canonical tag, update its strengths, or remove it.

A1111 toggles: clicking a card whose tag is in the prompt removes it. Here a click with the same
strengths removes the tag (and the activation text after it); with other strengths it rewrites the
tag in place, so changing a card's strength and clicking again updates the prompt.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

from loraprompt.library import Entry, Library
from loraprompt.library.resolve import (
    TagChoice,
    is_hash,
    printable,
    stand_in_name,
    tag_breakers,
    writable_name,
)
from loraprompt.syntax import LoraActivation, format_activation
from loraprompt.syntax.scanner import scan

MAX_STRENGTH = 100.0
SEPARATOR = ", "


@dataclass(frozen=True)
class Insertion:
    """The prompts after a click, and what happened in words."""

    prompt: str
    negative: str | None
    action: str  # "added" | "updated" | "removed"
    tag: str


def _finds(library: Library, name: str, entry: Entry, profile: str = "loraprompt") -> bool:
    found = library.resolve(name, profile=profile).entry
    return found is not None and found.path == entry.path


def tag_choice(library: Library, entry: Entry, stems: Counter[str], builtin: bool) -> TagChoice:
    """The name a card inserts. loraprompt's handler: the file stem (filename first, unlike A1111's
    alias), or its path under the root without the extension when another file has the same stem;
    when that path finds another file (the same path under another root), a stand-in name with
    `hash=`. A1111's built-in handler (`builtin`) resolves stems and aliases only, the last file of
    a stem winning: there a shared stem's card inserts the file's alias where that finds it (as
    A1111's own card does), else the stem, saying so. A name with `:`, `>`, `=` or `#` breaks the tag: the card inserts the alias when
    that is clean, else (loraprompt only) a clean name with `hash=`, and says so."""
    shared = stems[entry.name] > 1
    wanted = entry.name if builtin or not shared else entry.relpath.rsplit(".", 1)[0]
    alias = entry.alias
    if builtin and shared and alias and alias not in stems and not tag_breakers(alias) \
            and _finds(library, alias, entry, "a1111"):  # A1111's card inserts it too (network.get_alias)
        return TagChoice(alias, False)
    if builtin and shared and not tag_breakers(wanted):
        return TagChoice(wanted, False, f"{stems[entry.name]} files are named {printable(entry.name)}; A1111's built-in "
                                        "Lora loads the last one it finds, whichever card is clicked")
    choice = writable_name(library, entry, wanted, taken=stems, no_hash="A1111's built-in Lora" if builtin else None)
    # only a shared stem's path can find another file: a unique stem, or an alias, is this file's
    if builtin or not shared or choice.by_hash or _finds(library, choice.name, entry):
        return choice
    clean = stand_in_name(choice.name)
    if clean in stems or clean in library.aliases():
        clean += "_by_hash"
    return TagChoice(clean, True, f"{stems[entry.name]} files are named {printable(entry.name)} and {printable(choice.name)} "
                                  f"finds another one; the card inserts {clean} with the file's hash=, which finds it")


def toggle_names(library: Library, entry: Entry, choice: TagChoice) -> set[str]:
    """The tag names a click on the card of `entry` treats as its own (to update or remove): what
    it inserts, and its stem and alias only where they find this file, never another file's tag."""
    return {choice.name} | {n for n in (entry.name, entry.alias) if n and n != choice.name and _finds(library, n, entry)}


def check_strength(label: str, value: object) -> float:
    """`value` as a strength rounded to 4 decimals, or ValueError naming `label`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{label} strength must be a finite number, got {value!r}")
    if abs(value) > MAX_STRENGTH:
        raise ValueError(f"{label} strength {value} is outside -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}")
    return round(float(value), 4) + 0.0


def _tag_name(positional: tuple[str, ...]) -> str:
    return positional[0].strip() if positional else ""


def means_file(library: Library, entry: Entry) -> Callable[[str, str | None], bool]:
    """Whether a tag of a name in `toggle_names` (names that are this card's) with this `hash=`
    means `entry`: without a hash, yes; with one, what the library resolves it to, so a hash of
    another form (AutoV2's 10 digits, a full sha256) still counts as this file's and a hand-typed
    `hash=a` (no hash) counts only when the name alone finds it."""
    def means(name: str, hash: str | None) -> bool:
        if hash is None:
            return True
        found = library.resolve(name, hash=hash).entry
        return found is not None and found.path == entry.path
    return means


def _same_hash(found: str | None, ours: str | None) -> bool:
    """`toggle_tag`'s default without a library: a tag's `hash=` (`found`) can be the file whose
    hash is `ours` when either is missing or is no hash (the resolver ignores it then), else when
    one is a prefix of the other (A1111's 12 digits, a full sha256)."""
    if not found or not ours or not is_hash(found.strip()):
        return True
    a, b = found.strip().lower(), ours.lower()
    return a.startswith(b) or b.startswith(a)


def _hash_of(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _append(text: str, piece: str) -> str:
    base = text.rstrip()
    if not base:
        return piece
    return base + (" " if base.endswith(",") else SEPARATOR) + piece


def _cut(text: str, start: int, end: int, follower: str) -> str:
    """`text` without [start, end) and the `follower` text right after it; the separators around
    the cut collapse to one (a comma when either side had one)."""
    head, rest = text[:start], text[end:]
    if follower and rest.lstrip(" ,").startswith(follower):
        rest = rest[len(rest) - len(rest.lstrip(" ,")) + len(follower):]
    h, r = head.rstrip(" ,"), rest.lstrip(" ,")
    if not h or not r:
        return h + r
    gap = head[len(h):] + rest[: len(rest) - len(r)]
    return h + (SEPARATOR if "," in gap else " ") + r


def _remove_text(text: str, piece: str) -> str:
    at = text.find(piece)
    return _cut(text, at, at + len(piece), "") if piece and at >= 0 else text


def toggle_tag(
    prompt: str,
    activation: LoraActivation,
    names: Collection[str],
    *,
    activation_text: str = "",
    negative: str | None = None,
    negative_text: str = "",
    means: Callable[[str, str | None], bool] | None = None,
) -> Insertion:
    """Add, update or remove the tag of `activation` in `prompt`; `names` are every name that
    means the same file (stem, alias). A tag of such a name whose `hash=` differs from the
    activation's is another file's (two roots' `sub/x` stand-ins), left alone. Activation and
    negative text go with an added tag only when the prompt lacks them, and leave with a removed one.
    `means(name, hash)` decides whether a tag of such a name is this file's (`means_file`)."""
    tag = format_activation(activation)
    wanted = {n.strip() for n in names if n.strip()}
    source = prompt
    same = means or (lambda _name, found: _same_hash(found, activation.hash))
    existing = next((t for t in scan(source)[1] if t.kind in ("lora", "lyco") and _tag_name(t.positional) in wanted
                     and same(_tag_name(t.positional), _hash_of(t.named.get("hash")))), None)
    if existing is None:
        piece = tag + (SEPARATOR + activation_text if activation_text and activation_text not in prompt else "")
        new_negative = negative
        if negative is not None and negative_text and negative_text not in negative:
            new_negative = _append(negative, negative_text)
        return Insertion(_append(prompt, piece), new_negative, "added", tag)
    start, end = existing.span
    if existing.raw != tag:
        return Insertion(source[:start] + tag + source[end:], negative, "updated", tag)
    new_prompt = _cut(source, start, end, activation_text)
    new_negative = _remove_text(negative, negative_text) if negative is not None and negative_text else negative
    return Insertion(new_prompt, new_negative, "removed", tag)
