"""One module per algorithm; `ALGORITHMS` lists them in the order they claim a key group."""

from __future__ import annotations

from loraprompt.adapters.algorithms.full import FullModule, NormModule
from loraprompt.adapters.algorithms.glora import GLoRAModule
from loraprompt.adapters.algorithms.ia3 import IA3Module
from loraprompt.adapters.algorithms.loha import LoHaModule
from loraprompt.adapters.algorithms.lokr import LoKrModule
from loraprompt.adapters.algorithms.lora import LoraModule
from loraprompt.adapters.algorithms.oft import BOFTModule, OFTModule
from loraprompt.adapters.algorithms.tlora import TLoRAModule

ALGORITHMS = (LoraModule, LoHaModule, LoKrModule, IA3Module, FullModule, NormModule, GLoRAModule, BOFTModule, OFTModule,
              TLoRAModule)

__all__ = [
    "ALGORITHMS",
    "BOFTModule",
    "FullModule",
    "GLoRAModule",
    "IA3Module",
    "LoHaModule",
    "LoKrModule",
    "LoraModule",
    "NormModule",
    "OFTModule",
    "TLoRAModule",
]
