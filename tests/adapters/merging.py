"""Test helper: merge an Adapter into tiny models through loraprompt's key maps and deltas."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from loraprompt.adapters.types import Adapter
from loraprompt.keymaps import keymap_for_module, map_adapter


def merge(models: dict[str, nn.Module], adapter: Adapter, strength: float = 1.0) -> dict[str, dict[str, Tensor]]:
    """State dicts of `models` after adding every mapped module's delta (unmapped modules fail)."""
    keymaps = {c: keymap_for_module(c, m) for c, m in models.items()}
    result = map_adapter(adapter, keymaps)
    assert not result.unmapped, f"unmapped: {result.unmapped[:5]}"
    with torch.no_grad():
        for key, (component, target) in result.mapped.items():
            module = models[component].get_submodule(target.module)
            param = getattr(module, target.param)
            weight = param if target.rows is None else param[target.rows[0] : target.rows[1]]
            bias = getattr(module, "bias", None) if target.param == "weight" else None
            dw, db = adapter.modules[key].delta(weight.float(), strength, None if bias is None else bias.float())
            if dw is not None:
                weight += dw.to(weight.dtype)
            if db is not None and bias is not None:
                bias += db.to(bias.dtype)
    return {c: {k: v.detach().clone() for k, v in m.state_dict().items()} for c, m in models.items()}
