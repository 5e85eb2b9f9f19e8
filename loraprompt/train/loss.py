"""The loss of one training step: the step's batch (aspect-ratio buckets), flips, noise and
timesteps drawn from generators seeded with (seed, step), the conditioning, and the weighted loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from loraprompt.train.config import TrainConfig
from loraprompt.train.data import Dataset
from loraprompt.train.errors import TrainError
from loraprompt.train.model import Base, encode


class _Order:
    """Aspect-ratio-bucketed batches: each batch holds images of one bucket; the order of an epoch
    depends only on (seed, epoch)."""

    def __init__(self, sizes: list[tuple[int, int]], batch_size: int, seed: int,
                 repeats: list[int] | None = None) -> None:
        self.by_bucket: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):  # an image `repeats[i]` times an epoch (kohya's N_name folders)
            self.by_bucket.setdefault(size, []).extend([i] * (repeats[i] if repeats else 1))
        self.batch_size, self.seed = batch_size, seed
        self.per_epoch = sum(-(-len(v) // batch_size) for v in self.by_bucket.values())
        self._epoch, self._batches = -1, list[list[int]]()

    def batch(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            batches = []
            for size in sorted(self.by_bucket):
                items = self.by_bucket[size]
                perm = [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]
                batches += [perm[i:i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
            self._batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
            self._epoch = epoch
        return self._batches[pos]


def _to_tensor(image: Any) -> Tensor:
    import numpy as np

    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return array.permute(2, 0, 1)


class LossMixin:
    """`loss_at` and its conditioning, for `Trainer` (which sets these attributes in `_prepare`)."""

    config: TrainConfig
    base: Base
    dataset: Dataset
    device: torch.device
    weight_dtype: torch.dtype
    prediction: str
    noise_scheduler: Any
    accelerator: Any
    order: _Order
    latents: list[Tensor]
    flipped: list[Tensor]
    fixed_text: dict[str, Any]

    def _conditioning(self, captions: list[str], items: list[Any]) -> tuple[Tensor, dict[str, Any]]:
        base = self.base
        if hasattr(self, "fixed_text"):
            parts = [self.fixed_text[c] for c in captions]
            states = torch.cat([p.states for p in parts])
            pooled_parts = [p.pooled for p in parts if p.pooled is not None]
            pooled = torch.cat(pooled_parts) if pooled_parts else None
        else:
            enc = encode(base, captions, self.device)
            states, pooled = enc.states, enc.pooled
        extra: dict[str, Any] = {}
        if base.family == "sdxl":
            ids = []
            for item in items:
                (oh, ow), (top, left), (th, tw) = item.original_size, item.crop_top_left, item.size
                ids.append([oh, ow, top, left, th, tw])
            extra["added_cond_kwargs"] = {"text_embeds": pooled,
                                          "time_ids": torch.tensor(ids, dtype=states.dtype, device=self.device)}
        return states, extra

    def loss_at(self, step: int) -> Tensor:
        """The training loss of step `step` (its batch, noise and timesteps)."""
        config = self.config
        indices = self.order.batch(step)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 1)
        flips = (torch.rand(len(indices), generator=gen) < 0.5) & config.do_flip
        latents = torch.stack([(self.flipped if f else self.latents)[i] for i, f in zip(indices, flips.tolist())])
        noise = torch.randn(latents.shape, generator=gen)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=gen)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(indices),), generator=gen)
        noise, timesteps = noise.to(self.device, latents.dtype), timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        items = [self.dataset.images[i] for i in indices]
        with self.accelerator.autocast():
            states, extra = self._conditioning([it.caption for it in items], items)
            pred = self.base.pipe.unet(noisy, timesteps, states.to(self.weight_dtype), **extra).sample
        if self.prediction == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        elif self.prediction == "epsilon":
            target = noise
        else:
            raise TrainError(f"prediction type {self.prediction!r} is not supported (epsilon or v_prediction)")
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if config.min_snr_gamma:
            alphas = self.noise_scheduler.alphas_cumprod.to(self.device)[timesteps].float()
            snr = alphas / (1 - alphas)
            weight = snr.clamp(max=config.min_snr_gamma) / (snr + 1 if self.prediction == "v_prediction" else snr)
            loss = loss * weight
        return loss.mean()
