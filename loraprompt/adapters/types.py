"""The format-neutral adapter model shared by the reader, the patcher and the tools.

An `Adapter` is what `read_adapter(path)` returns: one `AdapterModule` per targeted module of the
base model, whatever file layout it came from (kohya, diffusers/PEFT, LyCORIS, ...).

Naming:
- `component` is a diffusers component name: "unet", "text_encoder" or "text_encoder_2".
- `path` is the module's path inside that component as the file spells it, with every "." turned
  into "_" (kohya's spelling), e.g. "down_blocks_0_attentions_0_proj_in",
  "input_blocks_4_1_transformer_blocks_0_attn1_to_q" (SGM/LDM naming) or
  "text_model_encoder_layers_0_self_attn_q_proj". `loraprompt.keymaps` turns it into the module
  name of whichever model is loaded (diffusers, transformers 4 or 5, A1111's LDM/SGM).
- `lora_key` is "<component>/<path>", unique within an adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(eq=False)
class AdapterModule:
    """One targeted module: the algorithm, its tensors and everything needed for its delta.

    Subclasses (one per algorithm) implement `unit_delta`. The shared finishing step (alpha/rank
    scale, DoRA, bias, reshape to the target) lives in `delta`.
    """

    component: str
    path: str
    algorithm: str
    tensors: Mapping[str, Tensor]
    alpha: float | None = None
    dora_scale: Tensor | None = None
    source_keys: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lora_key(self) -> str:
        return f"{self.component}/{self.path}"

    @property
    def linear(self) -> bool:
        """True when delta(weight, s) == s * delta(weight, 1); the patcher may then cache the unit
        delta and rescale it. False for DoRA and OFT-style (multiplicative) adapters."""
        raise NotImplementedError

    def delta(self, weight: Tensor, strength: float, bias: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(ΔW, Δbias) to add to the ORIGINAL weight (and bias) at this strength, in float32 and in
        the exact shape of `weight`/`bias`. `weight`/`bias` are the original tensors in float32 on
        the device where the delta should be computed. Raises ValueError (message naming the
        shapes) when the adapter does not fit the weight."""
        raise NotImplementedError


@dataclass(eq=False)
class Adapter:
    """A whole adapter file, format-neutral."""

    path: str
    name: str
    format: str  # "kohya", "peft", "diffusers", "diffusers-old", "lycoris", ...
    modules: dict[str, AdapterModule]  # lora_key -> module
    metadata: dict[str, str] = field(default_factory=dict)
    family: str | None = None  # "sd1", "sd2", "sdxl" or None when the keys cannot tell
    unclaimed: tuple[str, ...] = ()  # tensor keys no algorithm claimed (reported once)
    size: int = 0
    mtime_ns: int = 0

    def components(self) -> set[str]:
        return {m.component for m in self.modules.values()}
