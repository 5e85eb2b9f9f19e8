"""loraprompt: LoRA tooling for Stable Diffusion-family models.

Importing this package is cheap: the prompt parser needs only the standard library and lark, and
everything that needs torch is imported on first use.

The public names, from prompt to weights:

- ``parse(prompt, profile="loraprompt"|"a1111")`` -> ``ParsedPrompt``: the text Automatic1111
  encodes, the ``LoraActivation`` of each ``<lora:...>`` tag (``.loras``) and one ``Diagnostic``
  per problem (``.diagnostics``); ``parse_batch`` for a batch, ``format_activation`` writes a tag
  back, ``activation_from_items`` reads A1111's extra-network items.
- ``read_adapter(path)`` -> ``Adapter``: any LoRA/LyCORIS file (format, family, ``AdapterModule``
  per target), given by path or by ``Library`` entry; ``AdapterFileError`` names the file and key
  on bad input.
- ``Patcher({"unet": ..., "text_encoder": ...})``: ``sync([(adapter, te, unet) | (adapter,
  activation) | PlanEntry, ...])`` makes the weights base + exactly those LoRAs, ``restore()`` gives
  the original bits back, ``check(...)`` says what a sync would refuse without writing;
  ``PatchError`` leaves the model as it was (``FamilyMismatchError``: a LoRA for another model;
  ``ModelStateError``: refused for the model's state, such as diffusers' fused q/k/v projections,
  and asked again at the next sync). One Patcher per model.
- ``Library(folders)``: the LoRA folders scanned (names, aliases, hashes, sidecars), ``resolve``
  a tag's name as A1111 does.
- ``activate(pipe, prompt, library=...)``: all of the above around a diffusers pipeline call.

The errors above derive from ``LoraPromptError``; a misused argument raises TypeError or ValueError.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see of the lazy exports below (the package ships py.typed)
    from loraprompt.adapters import Adapter, AdapterModule, read_adapter
    from loraprompt.diagnostics import Diagnostic
    from loraprompt.errors import (
        AdapterFileError,
        FamilyMismatchError,
        LoraPromptError,
        ModelStateError,
        PatchError,
        PromptSyntaxError,
    )
    from loraprompt.integrations.diffusers import activate
    from loraprompt.library import Library
    from loraprompt.patcher import Patcher
    from loraprompt.syntax import (
        LoraActivation,
        ParsedPrompt,
        activation_from_items,
        format_activation,
        parse,
        parse_batch,
    )

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_EXPORTS: dict[str, str] = {
    "parse": "loraprompt.syntax",
    "parse_batch": "loraprompt.syntax",
    "format_activation": "loraprompt.syntax",
    "ParsedPrompt": "loraprompt.syntax",
    "LoraActivation": "loraprompt.syntax",
    "Diagnostic": "loraprompt.diagnostics",
    "LoraPromptError": "loraprompt.errors",
    "AdapterFileError": "loraprompt.errors",
    "PromptSyntaxError": "loraprompt.errors",
    "PatchError": "loraprompt.errors",
    "FamilyMismatchError": "loraprompt.errors",
    "ModelStateError": "loraprompt.errors",
    "read_adapter": "loraprompt.adapters",
    "Adapter": "loraprompt.adapters",
    "AdapterModule": "loraprompt.adapters",
    "Patcher": "loraprompt.patcher",
    "Library": "loraprompt.library",
    "activate": "loraprompt.integrations.diffusers",
    "activation_from_items": "loraprompt.syntax",
}

__all__ = [
    "Adapter",
    "AdapterFileError",
    "AdapterModule",
    "Diagnostic",
    "FamilyMismatchError",
    "Library",
    "LoraActivation",
    "LoraPromptError",
    "ModelStateError",
    "ParsedPrompt",
    "PatchError",
    "Patcher",
    "PromptSyntaxError",
    "__version__",
    "activate",
    "activation_from_items",
    "format_activation",
    "parse",
    "parse_batch",
    "read_adapter",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loraprompt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
