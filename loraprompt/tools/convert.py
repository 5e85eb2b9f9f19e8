"""Convert a LoRA between the kohya and PEFT/diffusers layouts, tensors and metadata unchanged (an
SD2/SDXL file without kohya's base-model fields gets them: A1111 would take it for SD1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraprompt.errors import ToolError
from loraprompt.tools.io import check_output, describe_inputs, recipe_metadata
from loraprompt.tools.lora import read_lora
from loraprompt.tools.writer import FORMATS, write_lora


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion did."""

    output: Path
    source_format: str
    target_format: str
    modules: int


def convert_lora(source: str | Path, output: str | Path, to: str, *, force: bool = False) -> ConvertReport:
    """Rewrite `source` in layout `to` ("kohya" or "peft"); every tensor is copied bit for bit."""
    if to not in FORMATS:
        raise ToolError(f"unknown LoRA format {to!r}; choose one of {', '.join(FORMATS)}")
    out = check_output(output, [source], force)
    lora = read_lora(source)
    metadata = {**lora.user_metadata(),
                **recipe_metadata("convert", inputs=describe_inputs([source]), source_format=lora.format, to=to)}
    write_lora(out, lora.modules.values(), to, metadata, lora.family, embeddings=lora.embeddings)
    return ConvertReport(out, lora.format, to, len(lora.modules))
