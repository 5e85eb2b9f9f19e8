"""LoRA tags and A1111's prompt syntax: standard library and lark only (no torch).

``parse`` strips and interprets ``<lora:…>`` tags (profiles ``loraprompt`` and ``a1111``);
``format_activation`` writes them back; ``split_and``, ``schedules`` and ``attention`` give A1111's
exact results for ``AND``, prompt editing/alternation and emphasis.
"""

from __future__ import annotations

from loraprompt.syntax.codes import DIAGNOSTIC_CODES
from loraprompt.syntax.emphasis import attention, split_and
from loraprompt.syntax.model import ExtraActivation, LoraActivation, ParsedBatch, ParsedPrompt, Tag
from loraprompt.syntax.parser import activation_from_items, parse, parse_batch
from loraprompt.syntax.printer import format_activation
from loraprompt.syntax.scanner import strip_comments
from loraprompt.syntax.schedule import schedules
from loraprompt.syntax.values import Schedule, StepPoint

__all__ = [
    "DIAGNOSTIC_CODES", "ExtraActivation", "LoraActivation", "ParsedBatch", "ParsedPrompt", "Schedule", "StepPoint", "Tag",
    "activation_from_items", "attention", "format_activation", "parse", "parse_batch", "schedules", "split_and", "strip_comments",
]
