"""One library entry per model file, and the header record the cache keeps for it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprompt.keymaps.family import detect_file_family, family_from_metadata
from loraprompt.library.metadata import (
    SD_VERSION_NAMES,
    MetadataSummary,
    summarize,
)
from loraprompt.library.quickheader import Layouts, read_quick_header
from loraprompt.library.sidecars import (
    MAX_DESCRIPTION,
    civitai_model_summary,
    civitai_summary,
    lora_manager_summary,
    read_json,
    read_text,
)

MODEL_EXTS = (".safetensors", ".pt", ".ckpt")
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# The summary is kept (in entries and the cache file) as compact JSON with `"` and `` ` `` swapped:
# inside the cache file's JSON it then needs no escapes, and that file (100 MB at 100,000 files)
# parses in ~0.2 s instead of ~0.35 s. A swap is its own inverse, whatever the text holds.
SUMMARY_SWAP = str.maketrans({'"': "`", "`": '"'})


def header_record(path: str | Path, layouts: Layouts | None = None) -> dict[str, Any]:
    """What the cache keeps about a model file's header (raises AdapterFileError if it is broken).
    A scan passes its `Layouts`: files with the same tensor section share its reading and family."""
    if not str(path).lower().endswith(".safetensors"):
        return {"kind": "pickle", "summary": "", "family": None, "family_source": None}
    header = read_quick_header(path, layouts)
    if layouts is not None and header.layout is not None:
        # the detector reads the metadata only through family_from_metadata: with the section's
        # text, that decides its answer (tests/library/test_library_layouts.py holds it to this)
        key = (header.layout, family_from_metadata(header.metadata))
        found = layouts.derived.get(key)
        if found is None:
            found = layouts.derived[key] = detect_file_family(header.shapes, header.metadata)
    else:
        found = detect_file_family(header.shapes, header.metadata)
    summary = summarize(header.metadata)
    record: dict[str, Any] = {
        "kind": "safetensors",
        "summary": _COMPACT.encode(summary.to_cache()).translate(SUMMARY_SWAP),
        "output_name": summary.output_name,
        "family": found.family,
        "family_source": found.source,
        "data_offset": header.data_offset,
        "tensors": len(header.shapes),
    }
    if found.conflict:
        record["family_conflict"] = found.conflict
    return record


def sidecar_value(kind: str, path: Path) -> Any:
    """The cached value of one sidecar file: the user JSON itself, an import's summary, or text.
    Raises OSError when the file cannot be read (that may go away: not a value to cache)."""
    if kind == "user":
        return read_json(path, io_errors=True)
    if kind == "civitai":
        doc = read_json(path, io_errors=True)
        return civitai_summary(doc) if doc is not None else None
    if kind == "api_info":
        doc = read_json(path, io_errors=True)
        return civitai_model_summary(doc, path.name[: -len(".api_info.json")]) if doc is not None else None
    if kind == "lora_manager":
        doc = read_json(path, io_errors=True)
        return lora_manager_summary(doc) if doc is not None else None
    text = read_text(path, MAX_DESCRIPTION * 4, io_errors=True)
    return text[:MAX_DESCRIPTION] if text is not None else None


@dataclass(slots=True)
class Entry:
    """A model file in the library, as plain values. `path` is absolute; `relpath` and `folder`
    are relative to `root`, with `/` separators; `name` is the file stem A1111 uses.

    Entries are shared (snapshots, threads): treat them as immutable and make changed copies with
    `dataclasses.replace`. Slots, and not frozen: a library of 100,000 files builds and holds
    100,000 entries, and a `__dict__` of these fields took ~400 bytes of each, a frozen
    dataclass's __init__ (one object.__setattr__ per field) ~5 µs. `summary` and the search text
    are computed on first use and kept in `_memo`. `size`, `mtime_ns`, `ino` and `ctime_ns` are the
    version of the file the entry was made from (`version`); `mtime_ns` is also its date."""

    name: str
    alias: str
    path: str
    root: str
    relpath: str
    folder: str
    size: int
    mtime_ns: int
    kind: str = "safetensors"
    detected_family: str | None = None
    family_source: str | None = None
    summary_json: str = field(default="", repr=False)  # parsed into `summary` on first use (quotes swapped: SUMMARY_SWAP)
    previews: tuple[str, ...] = ()
    user: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    error: str | None = None
    hidden: bool = False
    offline: bool = False
    data_offset: int | None = None
    notes: tuple[str, ...] = ()
    ino: int = 0
    ctime_ns: int = 0
    _memo: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def _remember(self, name: str, value: Any) -> Any:
        if self._memo is None:
            self._memo = {}
        self._memo[name] = value
        return value

    @property
    def summary(self) -> MetadataSummary:
        """The header's training metadata summary (parsed from `summary_json` on first use)."""
        memo = self._memo
        if memo is not None and "summary" in memo:
            return memo["summary"]  # type: ignore[no-any-return]
        text = self.summary_json.translate(SUMMARY_SWAP)
        found = MetadataSummary.from_json(json.loads(text)) if text else MetadataSummary()
        return self._remember("summary", found)  # type: ignore[no-any-return]

    @property
    def version(self) -> tuple[int, int, int, int]:
        """(size, mtime_ns, ino, ctime_ns) of the file it was made from (`hashes.file_version`)."""
        return (self.size, self.mtime_ns, self.ino, self.ctime_ns)

    @property
    def mtime(self) -> float:
        """Modification time in seconds since the epoch."""
        return self.mtime_ns / 1e9

    @property
    def family_set_by_user(self) -> bool:
        """Whether the user's `sd version` is one of A1111's names (SD1, SD2, SDXL, Unknown: the
        members of its SdVersion), which then decides `family`; another value means "detect it"."""
        version = self.user.get("sd version")
        return isinstance(version, str) and version in SD_VERSION_NAMES

    @property
    def family(self) -> str | None:
        """sd1/sd2/sdxl: the user's `sd version` when set to one of A1111's names ("Unknown": None,
        a card shown for every model, as A1111 shows it), else detected."""
        if self.family_set_by_user:
            return SD_VERSION_NAMES[self.user["sd version"]]
        return self.detected_family

    @property
    def base_model(self) -> str | None:
        """The finest base-model name known (e.g. "Pony", "Flux.1 D"): Civitai's, Lora-Manager's,
        then the header's `ss_base_model_version` / `modelspec.architecture`; None if none says."""
        for source in (self.imports.get(k, {}) for k in ("civitai", "api_info", "lora_manager")):
            if source.get("base_model"):
                return str(source["base_model"])
        return self.summary.base_model_version

    @property
    def preview(self) -> str | None:
        """The preview A1111 would show (first found), or None."""
        return self.previews[0] if self.previews else None

    @property
    def preferred_weight(self) -> float | None:
        """The user's preferred weight (A1111: 0 means the default), else Lora-Manager's strength."""
        value = self.user.get("preferred weight")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0:
            return float(value)
        strength = self.imports.get("lora_manager", {}).get("strength")
        return float(strength) if isinstance(strength, (int, float)) else None

    @property
    def activation_text(self) -> str:
        return str(self.user.get("activation text") or "")

    @property
    def favorite(self) -> bool:
        return bool(self.user.get("favorite")) or bool(self.imports.get("lora_manager", {}).get("favorite"))

    @property
    def nsfw(self) -> bool:
        return bool(self.user.get("nsfw")) or any(self.imports.get(k, {}).get("nsfw") for k in ("civitai", "api_info"))

    def trigger_words(self) -> list[tuple[str, str]]:
        """(word, source) pairs: the user's activation text first, then Civitai's trained words,
        Lora-Manager's, the header's trigger phrase and training tags by count (computed once)."""
        memo = self._memo
        if memo is None or "trigger_words" not in memo:
            memo = self._memo if self._remember("trigger_words", tuple(self._trigger_words())) is not None else None
        assert memo is not None
        return list(memo["trigger_words"])

    def _trigger_words(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        seen: set[str] = set()

        def add(words: Any, source: str) -> None:
            for w in words or ():
                if isinstance(w, str):
                    w = w.strip()
                    if w and w not in seen:
                        seen.add(w)
                        out.append((w, source))

        add(self.activation_text.split(","), "user")
        add(self.imports.get("civitai", {}).get("trained_words"), "civitai")
        add(self.imports.get("api_info", {}).get("trained_words"), "api_info")
        add(self.imports.get("lora_manager", {}).get("trained_words"), "lora_manager")
        add(self.summary.trigger_words, "header")
        return out

    @property
    def search_text(self) -> str:
        """Case-folded text a search matches (see `search_words`)."""
        memo = self._memo
        if memo is not None and "search_text" in memo:
            return memo["search_text"]  # type: ignore[no-any-return]
        return self._remember("search_text", self.search_words.casefold())  # type: ignore[no-any-return]

    @property
    def search_words(self) -> str:
        """What a search matches, as written: path, names, tags, trigger words, notes, description."""
        memo = self._memo
        if memo is not None and "search_words" in memo:
            return memo["search_words"]  # type: ignore[no-any-return]
        return self._remember("search_words", self._search_words())  # type: ignore[no-any-return]

    def _search_words(self) -> str:
        parts = [self.relpath, self.name, self.alias, self.description, str(self.user.get("notes") or "")]
        parts += [str(self.user.get("description") or ""), self.activation_text]
        words = [w for w, _ in self.trigger_words()]
        shown = set(words)
        parts += words + [t for t, _ in self.summary.tags if t not in shown]  # trigger words are mostly the top tags
        parts += self.imports.get("lora_manager", {}).get("tags", []) + self.imports.get("api_info", {}).get("tags", [])
        parts += [str(self.imports.get("lora_manager", {}).get("notes") or "")]
        return "\n".join(parts)
