"""Name resolution (spec/syntax.md section 4.7): A1111's way first (file stem, then the
`ss_output_name` alias unless forbidden), then by hash, then lenient fallbacks that each add a
warning; an ambiguous fallback is an error listing the candidates."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

from loraprompt.diagnostics import Diagnostic
from loraprompt.library.entry import MODEL_EXTS, Entry
from loraprompt.syntax.printer import TAG_BREAKERS

_ESCAPED = re.compile(r"\\([()\[\]{}|:<>\\])")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _breaks(c: str) -> bool:
    # a lone surrogate is a byte of a file name that is not UTF-8: the page and the image's
    # infotext carry text as UTF-8, which has no such character, so it never comes back the same
    return c in TAG_BREAKERS or "\ud800" <= c <= "\udfff"


def _shown(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:
        return f"byte 0x{code & 0xff:02x} (not UTF-8)"
    return f"U+{code:04X}" if 0xD800 <= code <= 0xDFFF else c


def printable(name: str) -> str:
    """`name` for messages: its lone surrogates (bytes that are not UTF-8) as U+FFFD."""
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name)


def stand_in_name(name: str) -> str:
    """`name` with the characters that break a tag (and bytes that are not UTF-8) made `_`: what
    the gallery writes, with `hash=`, for a file whose name cannot be written in a tag (resolved
    without a warning)."""
    return "".join("_" if _breaks(c) else c for c in name)


def tag_breakers(name: str) -> str:
    """The characters of `name` that break a tag, each once, space-separated ("" when none); a
    byte that is not UTF-8 (a lone surrogate) is one, named by its value."""
    return " ".join(_breakers(name))


def _breakers(name: str) -> list[str]:
    return list(dict.fromkeys(_shown(c) for c in name if _breaks(c)))


@dataclass(frozen=True)
class TagChoice:
    """What a card inserts: `name`, with `hash=` when `by_hash` (no name of the file can be
    written in a tag), and `note` saying why when the file's own name is not what is inserted."""

    name: str
    by_hash: bool = False
    note: str = ""


def writable_name(library: Any, entry: Entry, wanted: str, *, taken: Container[str] = (),
                  no_hash: str | None = None) -> TagChoice:
    """`wanted` when it can be written in a tag. A name with `:`, `>`, `=` or `#` breaks the tag:
    then the file's alias (`library.display_name`) when that is clean, else a clean stand-in
    (`stand_in_name`, `_by_hash` added when it is in `taken`) to be written with `hash=`. When the
    handler reads no `hash=`, `no_hash` names it and the choice is `wanted` with "rename the file"."""
    bad = _breakers(wanted)
    if not bad:
        return TagChoice(wanted)
    alias = library.display_name(entry)
    breaks = "which breaks" if len(bad) == 1 else "which break"
    why = f"The name {printable(wanted)} contains {' '.join(bad)}, {breaks} a <lora:...> tag"
    if alias != entry.name and not tag_breakers(alias):
        return TagChoice(alias, False, f"{why}; the card inserts the file's alias {alias}")
    if no_hash is not None:
        return TagChoice(wanted, False, f"{why}, and {no_hash} has no other name for it: rename the file")
    clean = stand_in_name(wanted)
    if clean in taken or clean in library.aliases():
        clean += "_by_hash"
    return TagChoice(clean, True, f"{why}; the card inserts {clean} with the file's hash=, which finds it")


def tag_hash(library: Any, entry: Entry) -> tuple[str | None, str]:
    """(the A1111 short hash a `by_hash` choice writes as `hash=`, None when it cannot be read;
    why not). The file is read when its hash is not known yet; an unreadable or vanished file is
    a reason, not an exception, so every caller can say "rename the file" the same way."""
    from loraprompt.errors import LoraPromptError

    try:
        short = library.hashes(entry).get("a1111_short")
    except (LoraPromptError, OSError) as exc:
        return None, str(exc)
    return (str(short), "") if short else (None, "cannot read the file to find its hash")


@dataclass(frozen=True)
class Resolution:
    """The entry a name resolved to (None when it did not) and how, as diagnostics."""

    entry: Entry | None
    diagnostics: tuple[Diagnostic, ...] = ()
    how: str = ""  # "stem", "alias", "hash", or the fallback step that matched
    candidates: tuple[Entry, ...] = ()


class NameIndex:
    """Lookup tables over entries in walk order, built once per scan. An alias shared by two
    files, equal to any file's stem, or `none` is forbidden whatever the walk order (A1111
    checks only files seen earlier, so a card could insert a name that resolves elsewhere)."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = list(entries)
        self.stems: dict[str, list[Entry]] = {}
        for e in self.entries:
            self.stems.setdefault(e.name, []).append(e)
        alias_count: dict[str, int] = {}
        for e in self.entries:
            if e.alias != e.name:
                alias_count[e.alias] = alias_count.get(e.alias, 0) + 1
        self.forbidden = {a.lower() for a, n in alias_count.items() if n > 1 or a in self.stems}
        self.forbidden.add("none")
        self.aliases = {
            e.alias: e for e in self.entries if e.alias != e.name and e.alias.lower() not in self.forbidden
        }

        self._tables: dict[tuple[Callable[[str], str], bool], dict[str, list[Entry]]] = {}

    def display_name(self, entry: Entry) -> str:
        """The name A1111's card inserts: the alias unless forbidden, else the stem."""
        return entry.alias if entry.alias.lower() not in self.forbidden else entry.name

    def table(self, fk: Callable[[str], str], with_paths: bool) -> dict[str, list[Entry]]:
        """Normalised key -> entries (walk order) over stems, usable aliases and, with
        `with_paths`, relative paths without extension; built on first use."""
        found = self._tables.get((fk, with_paths))
        if found is None:
            found = {}
            for e in self.entries:
                keys = {fk(e.name)}
                if e.alias in self.aliases:
                    keys.add(fk(e.alias))
                if with_paths:
                    keys.add(fk(_stem_of_relpath(e)))
                for k in keys:
                    found.setdefault(k, []).append(e)
            self._tables[(fk, with_paths)] = found
        return found


def _unquote(q: str) -> str:
    if len(q) >= 2 and q[0] == q[-1] and q[0] in "\"'":
        return q[1:-1]
    return q


def _strip_ext(q: str) -> str:
    for ext in MODEL_EXTS:
        if q.lower().endswith(ext):
            return q[: -len(ext)]
    return q


def _stem_of_relpath(e: Entry) -> str:
    return _strip_ext(e.relpath)


# (step, diagnostic code, query transform, key transform, match relative paths too)
Step = tuple[str, str, Callable[[str], str], Callable[[str], str], bool]


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def _nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def _case(s: str) -> str:
    return _nfkc(s).casefold()


def _space(s: str) -> str:
    return " ".join(_case(s).replace("_", " ").split())


def _ident(s: str) -> str:
    return s


STEPS: tuple[Step, ...] = (
    ("trim", "W-NAME-TRIMMED", str.strip, _ident, False),
    ("quotes", "W-NAME-QUOTED", lambda q: _unquote(q.strip()), _ident, False),
    ("escapes", "W-NAME-ESCAPED", lambda q: _ESCAPED.sub(r"\1", _unquote(q.strip())), _ident, False),
    ("unicode-nfc", "W-NAME-UNICODE", lambda q: _nfc(_ESCAPED.sub(r"\1", _unquote(q.strip()))), _nfc, False),
    ("unicode-nfkc", "W-NAME-UNICODE", lambda q: _nfkc(_ESCAPED.sub(r"\1", _unquote(q.strip()))), _nfkc, False),
    ("path", "W-NAME-PATH", lambda q: _strip_ext(_nfkc(_unquote(q.strip())).replace("\\", "/").strip("/")), _nfkc, True),
    ("case", "W-NAME-CASE", lambda q: _case(_strip_ext(_unquote(q.strip()).replace("\\", "/").strip("/"))), _case, True),
    ("underscore", "W-NAME-UNDERSCORE", lambda q: _space(_strip_ext(_unquote(q.strip()).replace("\\", "/").strip("/"))), _space, True),
)

_STEP_TEXT = {
    "trim": "after trimming whitespace",
    "quotes": "after removing quotes",
    "escapes": "after dropping backslash escapes",
    "unicode-nfc": "after Unicode NFC normalisation",
    "unicode-nfkc": "after Unicode NFKC normalisation",
    "path": "as a path relative to the LoRA folder",
    "case": "ignoring case",
    "underscore": "treating '_' and space as equal",
}


def match_exact(index: NameIndex, name: str) -> Resolution | None:
    stems = index.stems.get(name)
    if stems:
        chosen = stems[-1]  # A1111: the later file in walk order wins
        diags: tuple[Diagnostic, ...] = ()
        if len(stems) > 1:
            others = ", ".join(e.relpath for e in stems[:-1])
            diags = (
                Diagnostic(
                    "W-NAME-STEM-COLLISION",
                    f"{len(stems)} files are named {name!r}; using {chosen.relpath} as A1111 does "
                    f"(not {others}); write the folder path to choose",
                    subject=name,
                    data={"candidates": [e.relpath for e in stems]},
                ),
            )
        return Resolution(chosen, diags, "stem", tuple(stems))
    if name in index.aliases:
        return Resolution(index.aliases[name], (), "alias")
    return None


def match_lenient(index: NameIndex, name: str) -> Resolution | None:
    for step, code, fq, fk, with_paths in STEPS:
        q = fq(name)
        if not q:
            continue
        matches = index.table(fk, with_paths).get(q, [])
        if len(matches) == 1:
            e = matches[0]
            msg = f"LoRA {name!r} matched {e.relpath} only {_STEP_TEXT[step]}; {_advice(index, e)}"
            return Resolution(e, (Diagnostic(code, msg, subject=name, data={"step": step}),), step)
        if len(matches) > 1:
            listed = ", ".join(m.relpath for m in matches[:10])
            msg = f"LoRA {name!r} is ambiguous {_STEP_TEXT[step]}: {listed}; write the folder path or hash="
            diag = Diagnostic("E-NAME-AMBIGUOUS", msg, severity="error", subject=name,
                              data={"step": step, "candidates": [m.relpath for m in matches]})
            return Resolution(None, (diag,), step, tuple(matches))
    return None


def _advice(index: NameIndex, e: Entry) -> str:
    """What to write instead: the name A1111's card inserts for `e` when that name finds `e`. When
    other files share `e`'s stem, that name finds the last of them, and only the folder path (which
    A1111's built-in Lora does not read) or `hash=` chooses `e`."""
    name = index.display_name(e)
    found = match_exact(index, name)
    if found is None or found.entry is None or found.entry is e:
        return f"write {name!r}"
    shared = len(index.stems.get(e.name, ()))
    return (f"{shared} files are named {e.name!r} and {name!r} finds {found.entry.relpath}, so the folder path "
            f"{_stem_of_relpath(e)!r} is the name that chooses this one (Automatic1111's built-in Lora does not "
            "read folder paths: rename the file to use it there)")


def is_hash(wanted: str) -> bool:
    """True when `wanted` has a form `hash_matches` can match: 10, 12 or 64 hex digits."""
    return len(wanted) in (10, 12, 64) and bool(_HEX.match(wanted))


def hash_matches(hashes: dict[str, str | None], wanted: str) -> bool:
    """True when `wanted` is A1111's 12-digit short hash, an AutoV2 10-digit prefix, or a full sha256."""
    w = wanted.lower()
    if not is_hash(w):
        return False
    full, tensors = hashes.get("sha256") or "", hashes.get("a1111") or ""
    if len(w) == 64:
        return w in (full, tensors)
    if len(w) == 12:
        return tensors.startswith(w)
    if len(w) == 10:
        return full.startswith(w) or tensors.startswith(w)
    return False


def not_found(index: NameIndex, name: str) -> Resolution:
    """E-NAME-NOTFOUND with the closest names as suggestions."""
    names = sorted(set(index.stems) | set(index.aliases))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    diag = Diagnostic("E-NAME-NOTFOUND", f"LoRA {name!r} not found{hint}", severity="error", subject=name,
                      data={"suggestions": close})
    return Resolution(None, (diag,))
