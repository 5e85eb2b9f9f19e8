"""AND (composable diffusion) as Automatic1111 computes it, around an unmodified diffusers pipeline.

A1111 runs the UNet on the negative prompt and on every `AND` part, then combines the noise
predictions as  uncond + cfg * sum_i(w_i * (cond_i - uncond)).  The pipeline only knows one
positive prompt and applies  uncond + cfg * (cond - uncond),  so a forward pre-hook on the UNet
widens the conditional half of each batch into one copy per part (with that part's embeddings),
and a forward hook folds the parts back into  cond = uncond + sum_i(w_i * (cond_i - uncond)).
The pipeline's guidance step then gives A1111's result exactly. With CFG off (scale <= 1) the
pipeline has no negative half; the hook adds one, since A1111 still subtracts the negative.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loraprompt.ui.txt2img_prompt import Conditioning


class ComposableHook:
    """The UNet hooks for one pipeline call of `batch` images; `step` is the 1-based sampling step
    whose prompt texts apply (the caller advances it from the step-end callback)."""

    def __init__(self, conditioning: Conditioning, batch: int) -> None:
        self.cond = conditioning
        self.batch = batch
        self.step = 1
        self._guided = True

    def _embeds(self, dtype: Any, device: Any) -> tuple[Any, Any]:
        import torch

        negative, parts = self.cond.part_embeds(self.step)
        rows = [negative, *parts]
        hidden = torch.cat([h.to(device, dtype).expand(self.batch, -1, -1) for h, _ in rows])
        pooled = None
        if rows[0][1] is not None and self.cond.sdxl:
            pooled = torch.cat([p.to(device, dtype).expand(self.batch, -1) for _, p in rows])
        return hidden, pooled

    def pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        import torch

        args = list(args)  # type: ignore[assignment]
        sample = args[0] if args else kwargs["sample"]
        b, n = self.batch, len(self.cond.weights)
        self._guided = sample.shape[0] == 2 * b
        uncond, cond = (sample[:b], sample[b:]) if self._guided else (sample, sample)
        wide = torch.cat([uncond, *([cond] * n)])
        hidden, pooled = self._embeds(sample.dtype, sample.device)
        if args:
            args[0] = wide  # type: ignore[index]
        else:
            kwargs["sample"] = wide
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.dim() > 0 and timestep.shape[0] == sample.shape[0]:
            timestep = timestep[:1].expand(wide.shape[0])
            if len(args) > 1:
                args[1] = timestep  # type: ignore[index]
            else:
                kwargs["timestep"] = timestep
        kwargs["encoder_hidden_states"] = hidden
        added = kwargs.get("added_cond_kwargs")
        if added:
            ids = added["time_ids"]
            ids_u, ids_c = (ids[:b], ids[b:]) if self._guided else (ids, ids)
            kwargs["added_cond_kwargs"] = {**added, "text_embeds": pooled, "time_ids": torch.cat([ids_u, *([ids_c] * n)])}
        return tuple(args), kwargs

    def post(self, module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        import torch

        out = output[0] if isinstance(output, tuple) else output.sample
        b = self.batch
        uncond = out[:b]
        combined = uncond.clone()
        for i, weight in enumerate(self.cond.weights):
            combined = combined + weight * (out[b * (i + 1): b * (i + 2)] - uncond)
        result = torch.cat([uncond, combined]) if self._guided else combined
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output


@contextmanager
def composable(unet: Any, hook: ComposableHook | None) -> Iterator[None]:
    """Install `hook` on `unet` for the block (nothing when `hook` is None)."""
    if hook is None:
        yield
        return
    handles = [unet.register_forward_pre_hook(hook.pre, with_kwargs=True),
               unet.register_forward_hook(hook.post, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
