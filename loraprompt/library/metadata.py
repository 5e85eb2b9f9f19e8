"""What a LoRA file's header says about it: model family (the reader's detector,
`loraprompt.keymaps.family`), and a summary of the training metadata
(base model, trigger words from `ss_tag_frequency`, resolution, epochs, dim/alpha, modelspec.*).

Pure functions over the header's `metadata` and tensor entries; values shown are capped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from loraprompt.keymaps.family import detect_file_family

MAX_SHOWN = 1000  # characters of one metadata value kept for display
MAX_TAGS = 24  # tag frequencies kept in the summary (A1111 shows the top 24)
MAX_TRIGGERS = 24  # as many as A1111's "training dataset tags" shows
_NAME, _COUNT = itemgetter(0), itemgetter(1)
# A1111's SdVersion names, as a user's `sd version` sets them; "Unknown" is one of them (a card
# shown for every model, unless `lora_hide_unknown_for_versions`), not "detect it"
SD_VERSION_NAMES: dict[str, str | None] = {"SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl", "Unknown": None}

def cap(value: str, limit: int = MAX_SHOWN) -> str:
    """`value` cut to `limit` characters, with an ellipsis when it was longer."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """The family a trainer recorded (`modelspec.architecture`, `ss_base_model_version`, `ss_v2`)."""
    return detect_file_family({}, metadata).family


def family_from_tensors(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The family from tensor names and shapes alone (the one detector, without metadata)."""
    found = detect_file_family(shapes, {})
    return found.family if found.source == "keys" else None


def tag_frequency(metadata: Mapping[str, str]) -> list[tuple[str, int]]:
    """`ss_tag_frequency` summed over dataset folders, most frequent first (ties by name)."""
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return []
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
        return []
    totals: dict[str, int] = {}
    if isinstance(doc, dict) and len(doc) == 1:
        (folder,) = doc.values()
        # one dataset folder of clean tags and integer counts (the usual file): taken as it is, in C
        if isinstance(folder, dict) and set(map(type, folder.values())) <= {int} and "" not in folder:
            tags = list(folder)
            if list(map(str.strip, tags)) == tags:
                totals = folder
                doc = None
    if isinstance(doc, dict):
        for folder in doc.values():
            if not isinstance(folder, dict):
                continue
            for tag, count in folder.items():
                if type(count) is int:  # JSON's numbers: int (not bool) or float; keys are str
                    tag = tag.strip()
                    if tag:
                        totals[tag] = totals.get(tag, 0) + count
    # by count descending (stable, in C; counts are usually listed in that order already), then,
    # when counts tie, by name first: the count sort keeps ties in name order
    found = sorted(totals.items(), key=_COUNT, reverse=True)
    if len(set(map(_COUNT, found))) < len(found):
        found.sort()
        found.sort(key=_COUNT, reverse=True)
    return found


def _split_phrases(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class MetadataSummary:
    """The training metadata worth showing on a card or a details view (all values capped)."""

    output_name: str | None = None  # ss_output_name: A1111's alias (never modelspec.title)
    base_model: str | None = None  # ss_sd_model_name
    base_model_version: str | None = None  # ss_base_model_version / modelspec.architecture
    trigger_words: tuple[str, ...] = ()
    tags: tuple[tuple[str, int], ...] = ()
    resolution: str | None = None
    epochs: str | None = None
    dim: str | None = None
    alpha: str | None = None
    network_module: str | None = None
    training_started_at: str | None = None
    num_train_images: str | None = None
    clip_skip: str | None = None
    sshs_model_hash: str | None = None
    modelspec: dict[str, str] = field(default_factory=dict)
    has_cover_image: bool = False
    metadata_keys: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["tags"] = [list(t) for t in self.tags]
        out["trigger_words"] = list(self.trigger_words)
        out["modelspec"] = dict(self.modelspec)
        return out

    def to_cache(self) -> dict[str, Any]:
        """`to_json` without the values `from_json` restores by itself: fields at their defaults,
        and trigger words that are just the trigger phrase and the top tags (a library of 100,000
        files keeps this in memory and in its cache file)."""
        full = self.to_json()
        if tuple(full["trigger_words"]) == self._derived_triggers():
            del full["trigger_words"]
        return {k: v for k, v in full.items() if k == "trigger_words" or (v != _DEFAULTS[k] and v not in ([], {}))}

    def _derived_triggers(self) -> tuple[str, ...]:
        """The trigger words `summarize` finds from the trigger phrase and the tags kept here."""
        return _triggers(_split_phrases(self.modelspec.get("trigger_phrase", "")), list(map(_NAME, self.tags)))

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MetadataSummary:
        """Inverse of `to_json` and of `to_cache`."""
        values = dict(doc)
        values["tags"] = tuple((str(t), int(c)) for t, c in values.get("tags", ()))
        values["modelspec"] = dict(values.get("modelspec", {}))
        known = cls.__dataclass_fields__
        summary = cls(**{k: v for k, v in values.items() if k in known and k != "trigger_words"})
        words = tuple(values["trigger_words"]) if "trigger_words" in values else summary._derived_triggers()
        object.__setattr__(summary, "trigger_words", words)
        return summary


_DEFAULTS = MetadataSummary().__dict__


def _triggers(phrases: Sequence[str], tags: Sequence[str]) -> tuple[str, ...]:
    """Trigger words: the trigger phrase's parts, then tags by count, each once, capped."""
    top = tags[:MAX_TRIGGERS]
    if not phrases and (not top or max(map(len, top)) <= 200) and len(set(top)) == len(top):
        return tuple(top)  # nothing to cap, nothing repeated
    capped = [p if len(p) <= 200 else cap(p, 200) for p in [*phrases, *tags]]
    return tuple(dict.fromkeys(capped))[:MAX_TRIGGERS]  # ordered, each once


def summarize(metadata: Mapping[str, str]) -> MetadataSummary:
    """The `MetadataSummary` of a header's `__metadata__`."""

    def get(key: str) -> str | None:
        value = metadata.get(key)
        return cap(value) if isinstance(value, str) and value != "" else None

    tags = tag_frequency(metadata)
    triggers = _triggers(_split_phrases(metadata.get("modelspec.trigger_phrase", "")), list(map(_NAME, tags)))
    top = tags[:MAX_TAGS]
    if top and max(map(len, map(_NAME, top))) > 200:
        top = [(cap(t, 200), c) for t, c in top]
    modelspec = {k[len("modelspec.") :]: cap(v) for k, v in metadata.items() if k.startswith("modelspec.") and "thumbnail" not in k}
    epochs = get("ss_num_epochs") or get("ss_epoch")
    return MetadataSummary(
        output_name=get("ss_output_name"),  # A1111's alias (NetworkOnDisk); modelspec.title is shown as the header says
        base_model=get("ss_sd_model_name"),
        base_model_version=get("ss_base_model_version") or modelspec.get("architecture"),
        trigger_words=triggers,
        tags=tuple(top),
        resolution=get("ss_resolution") or modelspec.get("resolution"),
        epochs=epochs,
        dim=get("ss_network_dim"),
        alpha=get("ss_network_alpha"),
        network_module=get("ss_network_module"),
        training_started_at=get("ss_training_started_at"),
        num_train_images=get("ss_num_train_images"),
        clip_skip=get("ss_clip_skip"),
        sshs_model_hash=get("sshs_model_hash"),
        modelspec=modelspec,
        has_cover_image=_has_cover(metadata),
        metadata_keys=len(metadata),
    )


def _has_cover(metadata: Mapping[str, str]) -> bool:
    """Whether `ssmd_cover_images` holds an image the gallery can show (`details.cover_image`), not
    just any value: a card told it has one asks for a thumbnail that is then refused."""
    if not metadata.get("ssmd_cover_images"):
        return False
    from loraprompt.library.details import cover_kind  # details imports this module

    return cover_kind(metadata) is not None
