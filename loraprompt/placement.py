"""Where a weight really lives, and whether the module holding it still runs: where a patch must go.

Offloaded weights: diffusers' `enable_sequential_cpu_offload()` (accelerate's `cpu_offload`), and
a `device_map` that offloads to the CPU, leave each module a `meta` placeholder and keep the real
tensor in the module's `AlignDevicesHook.weights_map`; before every forward the hook copies that
tensor to the execution device. Writing the placeholder does nothing, so a LoRA patched there would
silently not apply: the patcher writes (and backs up, and restores) the kept tensor instead, and
the next forward takes it. A weights map that reads the tensor anew at each access (offload to disk: a
memory-mapped file) cannot be patched in place and is refused, as is a placeholder nobody fills.

Fused projections: diffusers' `fuse_qkv_projections()` keeps an Attention's `to_q`/`to_k`/`to_v`
(and `add_*_proj`) beside the `to_qkv`/`to_kv` its fused processor runs instead: a LoRA written into
the old ones would silently not apply, so it is refused until `unfuse_qkv_projections()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from loraprompt.errors import ModelStateError, PatchError


def stored(module: Any, name: str, tensor: Tensor, where: str) -> Tensor:
    """The tensor `module.<name>` really is: `tensor` itself, or, for a `meta` placeholder, the
    one accelerate's offload hook loads into it at each forward. PatchError naming `where` when
    there is no such tensor or it cannot be written in place."""
    if tensor.device.type != "meta":
        return tensor
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):  # a SequentialHook holds several
        weights = getattr(h, "weights_map", None)
        if weights is None or not getattr(h, "offload", False):
            continue
        try:
            first, again = weights[name], weights[name]
        except KeyError:
            continue
        if isinstance(first, Tensor) and first is again and first.device.type != "meta":
            return first
        kind = type(getattr(weights, "dataset", weights)).__name__
        raise PatchError(f"{where}: the weight is offloaded to disk by accelerate ({kind} reads it anew at every "
                         "forward), so a LoRA cannot be written into it; offload to CPU memory instead "
                         "(enable_sequential_cpu_offload or enable_model_cpu_offload, no offload_folder)")
    raise PatchError(f"{where}: the weight is on the 'meta' device, not loaded (an empty model, e.g. from "
                     "init_empty_weights, that nothing fills at forward time): there is nothing to patch")


def real_parameter(module: Any, name: str) -> Tensor:
    """`module.get_parameter(name)`, or the tensor an offload hook keeps for it (see `stored`)."""
    return stored(module, name, module.get_parameter(name), name)


# diffusers' fuse_qkv_projections(): the fused Linear that runs instead of an Attention's projections
_FUSED_INSTEAD = {"to_q": ("to_qkv",), "to_k": ("to_qkv", "to_kv"), "to_v": ("to_qkv", "to_kv"),
                  "add_q_proj": ("to_added_qkv",), "add_k_proj": ("to_added_qkv",), "add_v_proj": ("to_added_qkv",)}


def fused_away(component: str, modules: Mapping[str, Any], name: str) -> ModelStateError | None:
    """A ModelStateError naming module `name` of `component` (name -> module) when diffusers'
    fused processor runs another Linear instead of it (see the module docstring), else None."""
    parent, _, leaf = name.rpartition(".")
    attention = modules.get(parent)
    # the processor decides: the model-level unfuse_qkv_projections() only puts the old processors back
    if attention is None or "Fused" not in type(getattr(attention, "processor", None)).__name__:
        return None
    fused = next((f for f in _FUSED_INSTEAD.get(leaf, ()) if getattr(attention, f, None) is not None), None)
    if fused is None:
        return None
    return ModelStateError(f"{component}.{name}: diffusers' fuse_qkv_projections() runs {parent}.{fused} instead, so a "
                           "LoRA written here would not apply; call unfuse_qkv_projections() before applying LoRAs")
