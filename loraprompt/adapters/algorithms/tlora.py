"""T-LoRA (lycoris-lora 4.x `tlora`): ΔW = P·diag(λ)·Q − P₀·diag(λ₀)·Q₀, depending on W.

The file holds P (`p_layer`), Q (`q_layer`) and λ (`lambda_layer`), not the frozen base P₀, λ₀, Q₀
that training subtracts: LyCORIS rebuilds those when it loads the file, from the SVD of the
module's original weight (the top `rank` singular triplets, its default "principal" init), so the
delta is computed here the same way from the original weight. Training masks ranks per timestep;
at inference, with no mask set, LyCORIS uses all of them, and so does a merged weight. Only Linear
and 1×1 convolutions have a delta: for a k×k kernel LyCORIS' 1×1 factors do not make one (its own
merge and forward fail there), so such a target does not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from loraprompt.adapters.types import AdapterModule


@dataclass(eq=False)
class TLoRAModule(AdapterModule):
    """`p` (out, r[, 1, 1]), `q` (r, in[, 1, 1]) and `lambda` (1, r), LyCORIS' saved names."""

    name: ClassVar[str] = "tlora"
    required: ClassVar[frozenset[str]] = frozenset({"p", "q", "lambda"})

    @property
    def rank(self) -> int:
        return int(self.tensors["q"].shape[0])

    def inconsistency(self) -> str | None:
        p, q, lam = (tuple(self.tensors[k].shape) for k in ("p", "q", "lambda"))
        if len(p) < 2 or len(q) < 2 or any(k != 1 for k in (*p[2:], *q[2:])):
            return f"the T-LoRA factors p_layer {p} and q_layer {q} are not matrices (or 1×1 kernels)"
        if p[1] != q[0] or math.prod(lam) != q[0]:
            return f"the T-LoRA factors p_layer {p}, lambda_layer {lam} and q_layer {q} do not join (their ranks differ)"
        return None

    def fits(self, shape: tuple[int, ...]) -> bool:
        p, q = self.tensors["p"].shape, self.tensors["q"].shape
        return len(shape) >= 2 and p[0] == shape[0] and q[1] == shape[1] and all(k == 1 for k in shape[2:])

    def unit_delta(self, weight: Tensor) -> Tensor:
        if any(k != 1 for k in weight.shape[2:]):
            raise ValueError(f"{self.lora_key}: a T-LoRA (tlora) module has no delta for a {tuple(weight.shape[2:])} kernel: "
                             "LyCORIS' 1×1 factors do not make one (its own merge and forward fail there too)")
        r = self.rank
        p, q = self.tensor("p", weight).flatten(1), self.tensor("q", weight).flatten(1)
        lam = self.tensor("lambda", weight).reshape(-1, 1)
        u, s, vh = torch.linalg.svd(weight.reshape(weight.shape[0], -1), full_matrices=False)
        p0, lam0, q0 = u[:, :r], s[:r], vh[:r]
        if lam0.numel() < r:  # a rank above min(out, in): LyCORIS pads with zero vectors and λ₀ = 1e-6
            pad = r - lam0.numel()
            p0 = torch.nn.functional.pad(p0, (0, pad))
            q0 = torch.nn.functional.pad(q0, (0, 0, 0, pad))
            lam0 = torch.nn.functional.pad(lam0, (0, pad), value=1e-6)
        return p @ (lam * q) - p0 @ (lam0.reshape(-1, 1) * q0)
