"""A JSON-ready description of an adapter file: what `loraprompt inspect` prints."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from loraprompt.adapters.family import FAMILY_NAMES
from loraprompt.adapters.types import Adapter

SHOWN_VALUE = 200
TRIGGER_WORDS = 10
METADATA_KEYS = (
    "ss_base_model_version",
    "ss_sd_model_name",
    "ss_output_name",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_training_started_at",
    "ss_num_train_images",
    "ss_epoch",
    "ss_steps",
    "ss_v2",
)


def cap(value: str, limit: int = SHOWN_VALUE) -> str:
    """`value` cut to `limit` characters, marked when cut."""
    return value if len(value) <= limit else value[:limit] + f"… ({len(value)} chars)"


def trigger_words(metadata: dict[str, str], limit: int = TRIGGER_WORDS) -> list[tuple[str, int]]:
    """The most frequent training tags of kohya's `ss_tag_frequency` ({dataset: {tag: count}})."""
    try:
        doc = json.loads(metadata.get("ss_tag_frequency", "{}"))
    except json.JSONDecodeError:
        return []
    counts: Counter[str] = Counter()
    if isinstance(doc, dict):
        for tags in doc.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)):
                        counts[str(tag).strip()] += int(n)
    return [(tag, n) for tag, n in counts.most_common(limit) if tag]


def ranks(adapter: Adapter) -> dict[str, int]:
    """"rank/alpha" -> number of modules, e.g. {"4/8.0": 260, "full": 12}."""
    out: Counter[str] = Counter()
    for mod in adapter.modules.values():
        rank = mod.rank
        alpha = "" if mod.alpha is None else f"/{mod.alpha:g}"
        out[f"{rank}{alpha}" if rank is not None else mod.algorithm] += 1
    return dict(sorted(out.items()))


def summarize(adapter: Adapter, hashes: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Everything `inspect` shows about one adapter, as plain JSON values."""
    metadata = adapter.metadata
    modelspec = {k: cap(v) for k, v in sorted(metadata.items()) if k.startswith("modelspec.") and k != "modelspec.thumbnail"}
    return {
        "path": adapter.path,
        "name": adapter.name,
        "format": adapter.format,
        "algorithms": sorted(adapter.algorithms()),
        "family": adapter.family,
        "family_label": FAMILY_NAMES.get(adapter.family or "", "unknown"),
        "size": adapter.size,
        "modules": dict(sorted(Counter(m.component for m in adapter.modules.values()).items())),
        "ranks": ranks(adapter),
        "dora": sum(1 for m in adapter.modules.values() if m.dora_scale is not None),
        "unclaimed": {"count": len(adapter.unclaimed), "first": list(adapter.unclaimed[:5])},
        "embeddings": {name: {part: list(t.shape) for part, t in sorted(parts.items())}
                       for name, parts in sorted(adapter.embeddings.items())},
        "metadata": {k: cap(metadata[k]) for k in METADATA_KEYS if k in metadata},
        "modelspec": modelspec,
        "trigger_words": [{"tag": t, "count": n} for t, n in trigger_words(metadata)],
        "metadata_keys": len(metadata),
        "hashes": hashes or {},
    }


def render(info: dict[str, Any]) -> str:
    """The summary as a few human-readable lines."""
    lines = [
        f"{info['path']}",
        f"  format: {info['format']}   algorithms: {', '.join(info['algorithms'])}   family: {info['family_label']}",
        f"  size: {info['size']:,} bytes   modules: " + ", ".join(f"{c} {n}" for c, n in info["modules"].items()),
        "  rank/alpha: " + ", ".join(f"{k} x{n}" for k, n in info["ranks"].items()) + (f"   DoRA modules: {info['dora']}" if info["dora"] else ""),
    ]
    hashes = info["hashes"]
    if hashes:
        lines.append(f"  hashes: sha256 {hashes.get('sha256')}  (AutoV2 {hashes.get('autov2')})")
        lines.append(f"          tensor data {hashes.get('tensor_sha256')}  (A1111 short {hashes.get('a1111_short')})")
    for key, value in {**info["metadata"], **info["modelspec"]}.items():
        lines.append(f"  {key}: {value}")
    if info["trigger_words"]:
        lines.append("  trigger words: " + ", ".join(f"{w['tag']} ({w['count']})" for w in info["trigger_words"]))
    if info["embeddings"]:
        lines.append("  bundled embeddings: " + ", ".join(
            f"{name} ({' '.join(f'{p} {s[0]}x{s[1]}' for p, s in parts.items())})" for name, parts in info["embeddings"].items()))
    if info["unclaimed"]["count"]:
        lines.append(f"  {info['unclaimed']['count']} keys not read (first: {', '.join(info['unclaimed']['first'])})")
    return "\n".join(lines)
