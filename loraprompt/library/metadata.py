"""What a LoRA file's header says about it: model family, and a summary of the training metadata
(base model, trigger words from `ss_tag_frequency`, resolution, epochs, dim/alpha, modelspec.*).

Pure functions over the header's `metadata` and tensor entries; values shown are capped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_SHOWN = 1000  # characters of one metadata value kept for display
MAX_TAGS = 24  # tag frequencies kept in the summary (A1111 shows the top 24)
MAX_TRIGGERS = 24  # as many as A1111's "training dataset tags" shows
SD_VERSION_NAMES = {"SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl"}

_CROSS_ATTN_DIMS = {2048: "sdxl", 1024: "sd2", 768: "sd1"}
# key prefixes and inner parts that name SD3/Flux-style transformers, or SDXL-only modules
_DIT_PREFIXES = ("transformer.", "lora_transformer_")
_DIT_PARTS = ("double_blocks", "single_blocks", "joint_blocks")
_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "te1.", "te2.", "te1_", "te2_", "text_encoder_2")
_SDXL_PARTS = ("add_embedding", "label_emb")
# SD1/SD2 have one transformer block per UNet attention; SDXL has up to ten. SD3/Flux
# `transformer.transformer_blocks.N` and `single_transformer_blocks.N` are not UNet blocks.
_SDXL_BLOCK = re.compile(r"transformer_blocks[._][1-9]")
_UNET_ATTENTION = re.compile(r"(?:attentions[._]\d+|_\d+_1|middle_block_1)[._]$")
_TE_DIMS = {768: "sd1", 1024: "sd2"}


def cap(value: str, limit: int = MAX_SHOWN) -> str:
    """`value` cut to `limit` characters, with an ellipsis when it was longer."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """sd1/sd2/sdxl from kohya's `ss_*` keys or `modelspec.architecture`, else None."""
    arch = metadata.get("modelspec.architecture", "").lower()
    if arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if arch.startswith("stable-diffusion-v1"):
        return "sd1"
    version = metadata.get("ss_base_model_version", "").lower()
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return "sd2"
    if version.startswith("sd_v1") or (version == "" and "ss_network_module" in metadata and "ss_v2" in metadata):
        return "sd1"
    return None


def family_from_tensors(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """sd1/sd2/sdxl from key names (SDXL-only blocks, a second text encoder) and the width of
    cross-attention and text-encoder weights (tensor name -> shape); None when they cannot tell."""
    keys = "\n".join(shapes)  # searched as one string: C speed over hundreds of keys
    heads = {k[:18] for k in shapes}  # a file's keys share a few prefixes
    if any(h.startswith(_DIT_PREFIXES) for h in heads) or any(p in keys for p in _DIT_PARTS):
        return None  # SD3/Flux-style transformers: not a family this library patches
    if any(h.startswith(_SDXL_PREFIXES) for h in heads) or any(p in keys for p in _SDXL_PARTS):
        return "sdxl"
    for m in _SDXL_BLOCK.finditer(keys):
        if _UNET_ATTENTION.search(keys, max(0, m.start() - 40), m.start()):
            return "sdxl"
    for name in _keys_containing(keys, "attn2"):
        if "to_k" not in name and "to_v" not in name:
            continue
        found = next((_CROSS_ATTN_DIMS[d] for d in shapes.get(name) or () if d in _CROSS_ATTN_DIMS), None)
        if found:
            return found
    for name in _keys_containing(keys, "self_attn"):
        if "lora_te_" in name or "text_encoder" in name:
            found = next((_TE_DIMS[d] for d in shapes.get(name) or () if d in _TE_DIMS), None)
            if found:
                return found
    return None


def _keys_containing(keys: str, needle: str, limit: int = 64) -> Iterator[str]:
    """Up to `limit` keys (lines of `keys`) that contain `needle`, found at C speed."""
    pos = keys.find(needle)
    for _ in range(limit):
        if pos < 0:
            break
        start, end = keys.rfind("\n", 0, pos) + 1, keys.find("\n", pos)
        end = len(keys) if end < 0 else end
        yield keys[start:end]
        pos = keys.find(needle, end)


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
    if isinstance(doc, dict):
        for folder in doc.values():
            if not isinstance(folder, dict):
                continue
            for tag, count in folder.items():
                if isinstance(count, int) and not isinstance(count, bool):
                    tag = str(tag).strip()
                    if tag:
                        totals[tag] = totals.get(tag, 0) + count
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def _split_phrases(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass(frozen=True)
class MetadataSummary:
    """The training metadata worth showing on a card or a details view (all values capped)."""

    output_name: str | None = None
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
        defaults = MetadataSummary()
        return {k: v for k, v in full.items() if k == "trigger_words" or (v != getattr(defaults, k) and v not in ([], {}))}

    def _derived_triggers(self) -> tuple[str, ...]:
        """The trigger words `summarize` finds from the trigger phrase and the tags kept here."""
        return _triggers(_split_phrases(self.modelspec.get("trigger_phrase", "")), [t for t, _ in self.tags])

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


def _triggers(phrases: Sequence[str], tags: Sequence[str]) -> tuple[str, ...]:
    """Trigger words: the trigger phrase's parts, then tags by count, each once, capped."""
    out: list[str] = []
    for phrase in [*phrases, *tags]:
        phrase = cap(phrase, 200)
        if phrase not in out:
            out.append(phrase)
            if len(out) == MAX_TRIGGERS:
                break
    return tuple(out)


def summarize(metadata: Mapping[str, str]) -> MetadataSummary:
    """The `MetadataSummary` of a header's `__metadata__`."""

    def get(key: str) -> str | None:
        value = metadata.get(key)
        return cap(value) if isinstance(value, str) and value != "" else None

    tags = tag_frequency(metadata)
    triggers = _triggers(_split_phrases(metadata.get("modelspec.trigger_phrase", "")), [t for t, _ in tags])
    modelspec = {k[len("modelspec.") :]: cap(v) for k, v in metadata.items() if k.startswith("modelspec.") and "thumbnail" not in k}
    epochs = get("ss_num_epochs") or get("ss_epoch")
    return MetadataSummary(
        output_name=get("ss_output_name") or modelspec.get("title"),
        base_model=get("ss_sd_model_name"),
        base_model_version=get("ss_base_model_version") or modelspec.get("architecture"),
        trigger_words=triggers,
        tags=tuple((cap(t, 200), c) for t, c in tags[:MAX_TAGS]),
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
        has_cover_image=bool(metadata.get("ssmd_cover_images")),
        metadata_keys=len(metadata),
    )
