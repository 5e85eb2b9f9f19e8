"""Adapters for the patcher tests: plain LoRA modules (up @ down · alpha/rank) built on a model's
own Linear and 1x1-conv modules, and the independent reference the patcher must reproduce."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from loraprompt.adapters import read_adapter
from loraprompt.adapters.types import Adapter, AdapterModule
from loraprompt.keymaps import keymap_for_module
from loraprompt.patcher import Patcher
from tests.fixtures.loras import write_diffusers_lora, write_kohya_lora, write_lycoris


@dataclass(eq=False)
class PlainLora(AdapterModule):
    """ΔW = strength · alpha/rank · up @ down, reshaped to the weight."""

    @property
    def linear(self) -> bool:
        return True

    def delta(self, weight: Tensor, strength: float, bias: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        up = self.tensors["up"].to(weight.device, torch.float32)
        down = self.tensors["down"].to(weight.device, torch.float32)
        if up.shape[0] != weight.shape[0] or down[0].numel() != weight[0].numel():
            raise ValueError(f"up {tuple(up.shape)} / down {tuple(down.shape)} do not fit {tuple(weight.shape)}")
        rank = down.shape[0]
        scale = strength * (self.alpha if self.alpha is not None else rank) / rank
        dw = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(weight.shape) * scale
        db = self.tensors["bias"].to(weight.device, torch.float32) * strength if "bias" in self.tensors else None
        return dw, db


def patchable(component: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and 1x1-conv modules of a component, in model order."""
    out = []
    for name, module in component.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            out.append((name, module))
    return out


def make_adapter(
    components: dict[str, nn.Module], seed: int, *, rank: int = 2, every: int = 2, name: str | None = None,
    bias: bool = False,
) -> Adapter:
    """A LoRA on every `every`-th patchable module (offset by seed) of each component."""
    gen = torch.Generator().manual_seed(seed)
    modules: dict[str, AdapterModule] = {}
    for component, model in components.items():
        for i, (mod_name, module) in enumerate(patchable(model)):
            if (i + seed) % every:
                continue
            weight = module.weight
            tensors = {
                "up": torch.randn(weight.shape[0], rank, generator=gen) * 0.5,
                "down": torch.randn(rank, weight[0].numel(), generator=gen) * 0.5,
            }
            if bias and module.bias is not None:
                tensors["bias"] = torch.randn(weight.shape[0], generator=gen) * 0.1
            path = mod_name.replace(".", "_")
            mod = PlainLora(component, path, "lora", tensors, alpha=float(rank) / 2)
            modules[mod.lora_key] = mod
    label = name or f"lora{seed}"
    return Adapter(path=f"/virtual/{label}.safetensors", name=label, format="test", modules=modules)


def snapshot(components: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Every parameter and buffer, cloned."""
    return {
        f"{c}:{k}": v.detach().clone()
        for c, m in components.items()
        for k, v in [*m.named_parameters(), *m.named_buffers()]
    }


def assert_bit_equal(components: dict[str, nn.Module], snap: dict[str, Tensor]) -> None:
    """Every tensor torch.equal to the snapshot (compared in place: cloning the model to compare it
    took an eighth of the thousand-cycle test's time)."""
    now = {f"{c}:{k}": v for c, m in components.items() for k, v in [*m.named_parameters(), *m.named_buffers()]}
    bad = [k for k in snap if k not in now or not torch.equal(now[k].detach(), snap[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def reference(
    components: dict[str, nn.Module], original: dict[str, Tensor], entries: list[tuple[Adapter, float, float]]
) -> dict[str, Tensor]:
    """The expected weights of base + entries, computed independently in float32 and cast once."""
    keymaps = {c: keymap_for_module(c, m) for c, m in components.items()}
    acc: dict[str, Tensor] = {}
    for adapter, te, unet in entries:
        for module in adapter.modules.values():
            strength = unet if module.component == "unet" else te
            target = keymaps[module.component].lookup(module.path)
            assert target is not None and target.rows is None, module.lora_key
            name = target.module
            base = original[f"{module.component}:{name}.weight"].float()
            bias_name = f"{module.component}:{name}.bias"
            bias = original[bias_name].float() if bias_name in original else None
            dw, db = module.delta(base, strength, bias)
            w_key = f"{module.component}:{name}.weight"
            acc[w_key] = acc.get(w_key, base) + dw
            if db is not None:
                acc[bias_name] = acc.get(bias_name, bias) + db
    return {k: v.to(original[k].dtype) for k, v in acc.items()}


def to_dtype(components: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, nn.Module]:
    """The components cast to dtype (in place)."""
    return {k: v.to(dtype) for k, v in components.items()}


class FailingPatcher(Patcher):
    """Raises on the `fail_at`-th weight write from now (never when -1), to prove the rollback."""

    fail_at = -1

    def _write(self, key, parts):  # type: ignore[no-untyped-def]
        self.fail_at -= 1
        if self.fail_at == 0:
            raise RuntimeError("injected")
        super()._write(key, parts)


@functools.cache
def tool_adapters() -> tuple[Adapter, ...]:
    """One file per tool, written once per test session."""
    folder = Path(tempfile.mkdtemp(prefix="loraprompt-sm-"))
    written = [
        write_kohya_lora("sd1", folder / "kohya.safetensors", seed=1),
        write_diffusers_lora("sd1", folder / "peft.safetensors", seed=2),
        write_diffusers_lora("sd1", folder / "dora.safetensors", seed=3, use_dora=True),
        write_lycoris("sd1", folder / "loha.safetensors", "loha", seed=4),
        write_lycoris("sd1", folder / "lokr.safetensors", "lokr", seed=5),
        write_lycoris("sd1", folder / "locon.safetensors", "locon", seed=6),
    ]
    return tuple(read_adapter(w.path) for w in written)

