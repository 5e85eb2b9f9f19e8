"""The format-neutral adapter model shared by the reader, the patcher and the tools.

An `Adapter` is what `read_adapter(path)` returns: one `AdapterModule` per targeted module of the
base model, whatever file layout it came from (kohya, diffusers/PEFT, LyCORIS, ...).

Naming:
- `component` is a diffusers component name: "unet", "transformer" (SD3/Flux/Wan),
  "text_encoder", "text_encoder_2" or "text_encoder_3" (the T5 of SD3 and Flux, kohya's `lora_te3_`).
- `path` is the module's path inside that component as the file spells it, with every "." turned
  into "_" (kohya's spelling), e.g. "down_blocks_0_attentions_0_proj_in",
  "input_blocks_4_1_transformer_blocks_0_attn1_to_q" (SGM/LDM naming) or
  "text_model_encoder_layers_0_self_attn_q_proj". `loraprompt.keymaps` turns it into the module
  name of whichever model is loaded (diffusers, transformers 4 or 5, A1111's LDM/SGM).
- `lora_key` is "<component>/<path>", unique within an adapter.
- `tensors` use canonical part names per algorithm (e.g. "up"/"down"/"mid" for LoRA, whatever
  the file called them: lora_up/lora_B/lora.up/to_q_lora.up).

Modes: "reference" computes each delta as the tool that wrote the file does when it merges
(LyCORIS, PEFT/diffusers, kohya); "a1111" reproduces Automatic1111 v1.10.1 where it differs
(DoRA always normalised per input column and scaled linearly by the multiplier; alpha ignored for
GLoRA, IA3 and full-factor LoKr; W2's rank first for LoKr; BOFT's W' − W scaled linearly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import Tensor

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
MODES = ("reference", "a1111")


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
    mode: str = "reference"

    name: ClassVar[str] = ""
    required: ClassVar[frozenset[str]] = frozenset()
    optional: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def accepts(cls, parts: set[str]) -> bool:
        """Whether this algorithm claims a module whose tensors have these canonical part names."""
        return bool(cls.required) and cls.required <= parts <= cls.required | cls.optional

    @property
    def lora_key(self) -> str:
        return f"{self.component}/{self.path}"

    @property
    def rank(self) -> int | None:
        """The rank that alpha is divided by, or None when the algorithm has none."""
        return None

    @property
    def scale(self) -> float:
        """The alpha/rank factor: the file's `scale` tensor, else alpha/rank, else 1."""
        if "scale" in self.tensors:
            return float(self.tensors["scale"])
        rank = self.rank
        if self.alpha is None or not rank:
            return 1.0
        return self.alpha / rank

    @property
    def linear(self) -> bool:
        """True when delta(weight, s) == s * delta(weight, 1); the patcher may then cache the unit
        delta and rescale it. False for DoRA, LyCORIS BOFT and rescaled OFT."""
        return self.dora_scale is None

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether this module's tensors fit a weight of `shape` (checked without computing ΔW)."""
        return True

    def inconsistency(self) -> str | None:
        """Why this module's tensors cannot form a delta at all (factors that do not join, or would
        only broadcast into one), or None. Checked by the reader, without the target weight."""
        return None

    def unit_delta(self, weight: Tensor) -> Tensor:
        """ΔW at strength 1 before the alpha/rank scale, float32, any shape with weight's numel."""
        raise NotImplementedError

    def bias_delta(self) -> Tensor | None:
        """Δbias at strength 1 (already scaled as the algorithm wants), or None."""
        return None

    def delta(self, weight: Tensor, strength: float, bias: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(ΔW, Δbias) to add to the ORIGINAL weight (and bias) at this strength, in float32 and in
        the exact shape of `weight`/`bias`. `weight`/`bias` are the original tensors in float32 on
        the device where the delta should be computed. Raises ValueError (message naming the
        shapes) when the adapter does not fit the weight."""
        from loraprompt.adapters.finish import finish_delta

        return finish_delta(self, weight, strength, bias)

    def tensor(self, part: str, like: Tensor) -> Tensor:
        """One of this module's tensors in float32 on `like`'s device."""
        import torch

        return self.tensors[part].to(device=like.device, dtype=torch.float32)


@dataclass(eq=False)
class Adapter:
    """A whole adapter file, format-neutral."""

    path: str
    name: str
    format: str  # "kohya", "peft", "diffusers", "diffusers-old", "lycoris", ...
    modules: dict[str, AdapterModule]  # lora_key -> module
    metadata: dict[str, str] = field(default_factory=dict)
    family: str | None = None  # "sd1", "sd2", "sdxl", "sd3", "flux", "wan" or None when nothing tells
    family_source: str | None = None  # "keys" (names and shapes) or "metadata"
    family_conflict: str | None = None  # the metadata disagreeing with the names and shapes
    unclaimed: tuple[str, ...] = ()  # tensor keys no algorithm claimed (reported once)
    # bundled textual-inversion embeddings (A1111 v1.10's bundle_emb.*): token -> {"string_to_param"
    # (SD1/SD2) or "clip_l"/"clip_g" (SDXL): (vectors, width)}
    embeddings: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    size: int = 0
    mtime_ns: int = 0

    def components(self) -> set[str]:
        return {m.component for m in self.modules.values()}

    def algorithms(self) -> set[str]:
        return {m.algorithm for m in self.modules.values()}
