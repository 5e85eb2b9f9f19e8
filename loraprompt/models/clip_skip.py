"""How deep A1111's "Clip skip" can go on a loaded model: one answer for the web UI's slider, the
APIs' checks and the engine, so that none of them accepts a value another refuses."""

from __future__ import annotations

from typing import Any

MAX_CLIP_SKIP = 12  # A1111's CLIP_stop_at_last_layers setting goes from 1 to 12


def clip_skip_top(pipe: Any, encoder: str = "text_encoder") -> int:
    """The deepest clip skip `pipe`'s `encoder` can be read at: clip skip N reads its
    hidden_states[-N], so N can be at most its layer count (`num_hidden_layers`, never the bare
    embeddings), and at most 12 as A1111's setting. 12 when the encoder does not say its depth."""
    config = getattr(getattr(pipe, encoder, None), "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    return max(1, min(MAX_CLIP_SKIP, layers)) if isinstance(layers, int) else MAX_CLIP_SKIP


def clip_skip_limit(model: Any) -> int:
    """The highest clip skip `model` (a LoadedModel) can run: its `text_encoder`'s top (SDXL applies
    clip skip to CLIP-L, its `text_encoder`); 1 on SD3 and Flux.1, which read their encoders as trained."""
    if getattr(model, "family", None) in ("sd3", "flux"):
        return 1
    return clip_skip_top(getattr(model, "pipe", None))
