"""The exception hierarchy. Expected user mistakes are Diagnostics (values); these are for broken
files, refused operations and programming errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class LoraPromptError(Exception):
    """Root of every error loraprompt raises on purpose."""


class PromptSyntaxError(LoraPromptError, ValueError):
    """A prompt that cannot be parsed in strict mode; `span` is the (start, end) of the culprit."""

    def __init__(self, message: str, span: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.span = span


class AdapterFileError(LoraPromptError):
    """A LoRA/LyCORIS file that cannot be read safely. The message names the file (and key)."""

    def __init__(self, path: str | Path, reason: str, key: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.key = key
        where = f"{self.path}" + (f" [{key}]" if key else "")
        super().__init__(f"{where}: {reason}")


class FileReadError(AdapterFileError):
    """The system failed to read the file (an OSError: EIO on a network share or USB drive, a
    permission): it says nothing of the content, and may go away, so it is never remembered as
    the file being broken (a library scan reads it again next time)."""


class PatchError(LoraPromptError):
    """An adapter that cannot be applied to the loaded model; the model is left untouched.
    `module` is the adapter module (a file's LoRA module) the refusal blames, when one is known:
    the Patcher names its file by it, and with skip_bad_entries leaves only that LoRA out."""

    def __init__(self, message: str, *, module: Any = None) -> None:
        super().__init__(message)
        self.module = module


class ModelStateError(PatchError):
    """Refused for what the loaded model is doing now (diffusers' fused q/k/v projections), not
    for the file: the same LoRA applies once the model changes back, so a refusal is not remembered."""


class FamilyMismatchError(PatchError):
    """An adapter made for another model family (e.g. an SDXL LoRA on an SD1.x model)."""


class ToolError(LoraPromptError):
    """A merge/convert/resize/extract request that cannot be carried out; no output is left."""
