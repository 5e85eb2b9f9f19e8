"""The values behind the Lora card editor (extension/editor.py) and the card prompt: A1111's
`<stem>.json` keys, what the editor shows for each, which ones the user changed, and the rows and
tags it reads from the file's header metadata. No gradio, no torch, no `modules`: tested anywhere.

The keys and their meaning are A1111's (extensions-builtin/Lora/ui_edit_user_metadata.py); the
header metadata is untrusted (any file from the internet), so every row and tag tolerates values
of the wrong type and leaves them out instead of failing the whole editor.
"""

from __future__ import annotations

import datetime
import html
import math
import random
import re
from collections.abc import Mapping
from typing import Any

from loraprompt.library.metadata import MAX_SHOWN, cap
from loraprompt.library.sidecars import SD_VERSIONS as SD_CHOICES  # A1111's four, the gallery's too

# The keys the editor writes, in the order of its Save handler's inputs after the card name
EDITED_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
TEXT_KEYS = tuple(k for k in EDITED_KEYS if k != "preferred weight")
WEIGHT_STEP = 0.01  # the slider's step: a value it shows may come back rounded to it
MAX_TAGS = 24  # tags shown, as the built-in
_WORD = re.compile(r"[-_\w']+")
_COMMA = re.compile(r" *, *")
_HEADER_ROWS = {"ss_output_name": "Output name:", "ss_sd_model_name": "Model:", "ss_clip_skip": "Clip skip:",
                "ss_network_module": "Kohya module:"}


def preferred_weight(value: Any) -> float | None:
    """A `preferred weight` from `<stem>.json` as a number, None for 0 or anything not a finite number."""
    if isinstance(value, bool):
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        return None
    return weight if math.isfinite(weight) and weight != 0 else None


def shown_values(user: Mapping[str, Any], sd_version: str) -> dict[str, Any]:
    """What the editor shows for each edited key of `user` (the `<stem>.json` object): text as
    text ("" when missing), the weight as a finite number (0, "off", for anything else, as A1111's
    cards read it), the user's SD version when it is one of the dropdown's, else `sd_version`."""
    values: dict[str, Any] = {k: "" if user.get(k) is None else str(user[k]) for k in TEXT_KEYS}
    chosen = user.get("sd version")
    values["sd version"] = chosen if chosen in SD_CHOICES else (sd_version if sd_version in SD_CHOICES else "Unknown")
    values["preferred weight"] = preferred_weight(user.get("preferred weight")) or 0.0
    return values


def submitted_values(values: tuple[Any, ...]) -> dict[str, Any]:
    """The Save handler's inputs (in EDITED_KEYS order) as the values written: text as text, the
    weight as a float. Raises ValueError for a weight that is not a finite number."""
    out = dict(zip(EDITED_KEYS, values, strict=True))
    for key in TEXT_KEYS:
        out[key] = "" if out[key] is None else str(out[key])
    weight = out["preferred weight"]
    number = 0.0 if weight is None or weight == "" else float(weight)
    if isinstance(weight, bool) or not math.isfinite(number):
        raise ValueError(f"preferred weight must be a finite number, got {weight!r}")
    out["preferred weight"] = number
    return out


def edited(shown: Mapping[str, Any] | None, submitted: Mapping[str, Any]) -> dict[str, Any]:
    """The submitted values the user changed from those shown (all of them when nothing was
    recorded as shown). A weight within half a slider step of the one shown is unchanged."""
    if shown is None:
        return dict(submitted)
    out: dict[str, Any] = {}
    for key, value in submitted.items():
        before = shown.get(key)
        if key == "preferred weight":
            same = isinstance(before, (int, float)) and abs(float(before) - value) < WEIGHT_STEP / 2
        else:
            same = before == value
        if not same:
            out[key] = value
    return out


def dataset_tags(metadata: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(tag, count) of the training captions (`ss_tag_frequency`), most frequent first. Captions
    that are sentences rather than comma-separated tags (average length 16 or more) are counted
    by word, words under 3 characters left out, as A1111 does. A tag or word longer than the
    gallery shows of a value (MAX_SHOWN) is left out at the end (a long caption still counts by word):
    no tag is that long, and the editor would draw it as a button and paste it whole into the
    activation text (robustness item 7)."""
    tags: dict[str, int] = {}
    frequency = metadata.get("ss_tag_frequency")
    for per_folder in frequency.values() if isinstance(frequency, Mapping) else ():
        for tag, count in per_folder.items() if isinstance(per_folder, Mapping) else ():
            number = _count(count)
            if number is not None:
                tag = str(tag).strip()
                tags[tag] = tags.get(tag, 0) + number
    if tags and sum(len(t) for t in tags) / len(tags) >= 16:
        words: dict[str, int] = {}
        for text, count in tags.items():
            for word in _WORD.findall(text):
                if len(word) >= 3:
                    words[word] = words.get(word, 0) + count
        tags = words
    return sorted(((t, n) for t, n in tags.items() if len(t) <= MAX_SHOWN), key=lambda kv: kv[1], reverse=True)


def _count(value: Any) -> int | None:
    try:
        return None if isinstance(value, bool) else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def random_prompt(tags: list[tuple[str, int]], rng: random.Random | None = None) -> str:
    """Tags drawn with a chance proportional to their count (the most frequent always), prompt
    brackets escaped, sorted and comma-separated: A1111's "Random prompt"."""
    draw = (rng or random).random
    top = tags[0][1] if tags else 0
    chosen = []
    for tag, count in tags:
        if count > draw() * top:
            for bracket in "({[]})":
                tag = tag.replace(bracket, "\\" + bracket)
            chosen.append(tag)
    return ", ".join(sorted(chosen))


def toggle_tag(activation_text: str, tag: str) -> str:
    """`activation_text` with `tag` removed when it is one of its comma-separated words, else added at the end."""
    words = _COMMA.split(activation_text or "")
    if tag in words:
        return ", ".join(w for w in words if w != tag and w.strip())
    return f"{activation_text}, {tag}" if activation_text else tag


def header_rows(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The editor's rows from a LoRA's header metadata (A1111's: output name, model, clip skip,
    kohya module, date trained, resolutions, dataset size), as HTML-safe text, each capped as the
    gallery caps what it shows (robustness item 7)."""
    rows = [(label, html.escape(cap(str(metadata[key])))) for key, label in _HEADER_ROWS.items()
            if metadata.get(key) is not None and str(metadata[key]) != "None"]
    try:
        started = float(metadata.get("ss_training_started_at") or 0)
        if started:
            when = datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc)
            rows.append(("Date trained:", when.strftime("%Y-%m-%d %H:%M")))
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    rows += _resolution_rows(metadata.get("ss_bucket_info"))
    images = 0
    dirs = metadata.get("ss_dataset_dirs")
    for params in dirs.values() if isinstance(dirs, Mapping) else ():
        images += (_count(params.get("img_count", 0)) or 0) if isinstance(params, Mapping) else 0
    if images:
        rows.append(("Dataset size:", str(images)))
    return rows


def _resolution_rows(info: Any) -> list[tuple[str, str]]:
    buckets = info.get("buckets") if isinstance(info, Mapping) else None
    counts: dict[str, int] = {}
    for bucket in buckets.values() if isinstance(buckets, Mapping) else ():
        try:
            size = bucket["resolution"]
            key = f"{size[1]}x{size[0]}"
            counts[key] = counts.get(key, 0) + int(bucket["count"])
        except (TypeError, ValueError, KeyError, IndexError, OverflowError):
            continue
    if not counts:
        return []
    ordered = sorted(counts, key=lambda k: counts[k], reverse=True)
    text = html.escape(", ".join(ordered[:4]))
    if len(ordered) > 4:
        text = f"<span title='{html.escape(cap(', '.join(ordered)))}'>{text}, ...</span>"
    return [("Resolutions:" if len(ordered) > 1 else "Resolution:", text)]
