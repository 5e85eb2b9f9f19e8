"""Weights that accelerate keeps outside their module: where a patch must go.

diffusers' `enable_sequential_cpu_offload()` (accelerate's `cpu_offload`), and a `device_map` that
offloads to the CPU, leave each module a `meta` placeholder and keep the real tensor in the
module's `AlignDevicesHook.weights_map`; before every forward the hook copies that tensor to the
execution device. Writing the placeholder does nothing, so a LoRA patched there would silently not
apply: the patcher writes (and backs up, and restores) the kept tensor instead, and the next
forward takes it. A weights map that reads the tensor anew at each access (offload to disk: a
memory-mapped file) cannot be patched in place and is refused, as is a placeholder nobody fills.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from loraprompt.errors import PatchError


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
