"""Bundled embeddings (`bundle_emb.*` in a LoRA file) registered in A1111's embedding database
while their LoRA is active, as A1111 v1.10's built-in Lora extension does: a file embedding of the
same name wins, one of another width than the model's is skipped, and the next activation
unregisters what the previous one registered."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from loraprompt.diagnostics import Diagnostic

log = logging.getLogger(__name__)
_REGISTERED: dict[str, Any] = {}  # name -> the Embedding we registered


def _data(parts: dict[str, Any]) -> dict[str, Any]:
    if "string_to_param" in parts:
        return {"string_to_param": {"*": parts["string_to_param"]}}
    return {k: v for k, v in parts.items() if k in ("clip_l", "clip_g")}


def sync(sd_model: Any, adapters: list[Any]) -> list[Diagnostic]:
    """Register exactly the embeddings bundled in `adapters` (none: unregister ours)."""
    try:
        from modules import sd_hijack
        from modules.textual_inversion import textual_inversion
    except ImportError:  # not inside A1111
        return []
    db = sd_hijack.model_hijack.embedding_db
    for name, ours in list(_REGISTERED.items()):
        if db.word_embeddings.get(name) is ours:
            db.register_embedding_by_name(None, sd_model, name)
        del _REGISTERED[name]
    out: list[Diagnostic] = []
    for adapter in adapters:
        for name, parts in getattr(adapter, "embeddings", {}).items():
            if name in _REGISTERED:
                continue
            if name in db.word_embeddings:
                out.append(Diagnostic("W-EMBEDDING-SKIPPED", f"{adapter.name}: an embedding file named {name!r}"
                                      " exists; it wins over the one bundled in the LoRA", subject=adapter.name))
                continue
            try:
                embedding = textual_inversion.create_embedding_from_data(
                    _data(parts), name, filename=f"{Path(adapter.path).name}/{name}")
            except Exception as exc:  # A1111 raises a bare Exception for data it cannot use
                out.append(Diagnostic("W-EMBEDDING-SKIPPED", f"{adapter.name}: bundled embedding {name!r}: {exc}",
                                      subject=adapter.name))
                continue
            expected = getattr(db, "expected_shape", -1)  # the model's width; -1 before embeddings are loaded
            if expected not in (-1, embedding.shape):  # as the built-in checks: another width fails the prompt
                out.append(Diagnostic("W-EMBEDDING-SKIPPED", f"{adapter.name}: bundled embedding {name!r} is "
                                      f"{embedding.shape} wide, the loaded model's embeddings {expected}",
                                      subject=adapter.name))
                continue
            embedding.shorthash = adapter.name  # A1111 shows the LoRA's name as the TI hash
            # The file it came from: A1111's Textual Inversion page splits every embedding's filename
            # and lists the folder it is in (ui_extra_networks_textual_inversion.py:20, util.py:79),
            # and None (what the built-in leaves, as filepath= would hash the whole LoRA) fails the
            # page while the LoRA is active. Its card shows the LoRA's preview and description.
            embedding.filename = adapter.path
            db.register_embedding(embedding, sd_model)
            _REGISTERED[name] = embedding
    return out
