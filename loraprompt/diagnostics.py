"""Diagnostics: expected user mistakes reported as values that a caller shows (never raised)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Diagnostic:
    """One message for the user. `span` is (start, end) in the prompt when it comes from one;
    `subject` names what it is about (a LoRA name, a file path) when it does not."""

    code: str
    message: str
    span: tuple[int, int] | None = None
    severity: Severity = "warning"
    subject: str | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "severity": self.severity, "message": self.message}
        if self.span is not None:
            out["span"] = list(self.span)
        if self.subject is not None:
            out["subject"] = self.subject
        if self.data:
            out["data"] = self.data
        return out

    def __str__(self) -> str:
        where = f" at {self.span[0]}-{self.span[1]}" if self.span else ""
        who = f" [{self.subject}]" if self.subject else ""
        return f"{self.severity}{where}{who}: {self.message} ({self.code})"
