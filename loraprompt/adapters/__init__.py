"""Adapters: every LoRA/LyCORIS file format, read into one format-neutral model."""

from loraprompt.adapters.types import COMPONENTS, Adapter, AdapterModule

__all__ = ["COMPONENTS", "Adapter", "AdapterModule"]
