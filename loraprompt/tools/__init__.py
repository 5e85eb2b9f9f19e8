"""Merge, convert, resize and extract: checkpoint and LoRA tools on one engine (the adapter reader,
the key maps and the patcher's arithmetic), streaming tensor by tensor, writing atomically.

    merge_checkpoint(checkpoint, [(lora, te, unet), ...], output, dtype=None, layout=None)
    merge_loras([lora, ...], [weight, ...], output, target=None | RankTarget(rank=32))
    convert_lora(lora, output, to="kohya" | "peft" | "comfyui" | "bfl" | "xlabs")
    resize_lora(lora, output, RankTarget(rank=16) | RankTarget(energy=0.95))
    extract_lora(tuned, base, output, RankTarget(rank=32))
SD1/SD2/SDXL, and SD3/Flux.1/Wan 2.x (diffusers folders, native-named single files, scaled fp8).
Imported lazily, so `import loraprompt.tools` costs nothing until a tool is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "merge_checkpoint": "loraprompt.tools.merge",
    "LoraSpec": "loraprompt.tools.merge",
    "MergeReport": "loraprompt.tools.merge",
    "merge_loras": "loraprompt.tools.lora_merge",
    "convert_lora": "loraprompt.tools.convert",
    "resize_lora": "loraprompt.tools.resize",
    "extract_lora": "loraprompt.tools.extract",
    "RankTarget": "loraprompt.tools.svd",
    "read_lora": "loraprompt.tools.lora",
    "write_lora": "loraprompt.tools.writer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loraprompt.tools' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
