"""Adapters: every LoRA/LyCORIS file format, read into one format-neutral model."""

from __future__ import annotations

from typing import Any

from loraprompt.adapters.types import COMPONENTS, MODES, Adapter, AdapterModule

__all__ = ["COMPONENTS", "MODES", "Adapter", "AdapterModule", "read_adapter"]


def __getattr__(name: str) -> Any:
    """`read_adapter` needs torch: import it on first use so the types stay cheap to import."""
    if name == "read_adapter":
        from loraprompt.adapters.reader import read_adapter

        return read_adapter
    raise AttributeError(f"module 'loraprompt.adapters' has no attribute {name!r}")
