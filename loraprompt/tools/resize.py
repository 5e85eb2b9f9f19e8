"""Change a LoRA's rank by SVD, reporting how much of each module's norm is kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from loraprompt.tools.io import (
    Progress,
    check_output,
    describe_inputs,
    parse_dtype,
    rank_metadata,
    recipe_metadata,
)
from loraprompt.tools.lora import LoraFactors, read_lora
from loraprompt.tools.stream import resolve_device, to_host
from loraprompt.tools.svd import RankTarget, factorise, factorise_product
from loraprompt.tools.writer import write_lora


@dataclass(frozen=True)
class ModuleResize:
    """One module: rank before and after, and the fraction of ‖ΔW‖_F kept."""

    key: str
    old_rank: int
    new_rank: int
    kept: float


@dataclass(frozen=True)
class ResizeReport:
    """Per-module results of a resize."""

    output: Path
    modules: list[ModuleResize] = field(default_factory=list)

    @property
    def min_kept(self) -> float:
        return min((m.kept for m in self.modules), default=1.0)


def resize_factors(module: LoraFactors, target: RankTarget, dtype: torch.dtype,
                   device: torch.device | None = None) -> tuple[LoraFactors, float]:
    """The module refactorised at the target rank (computed on `device`, returned on the CPU),
    keeping its alpha/rank scale, and the kept norm."""
    scale = module.scale
    device = device or torch.device("cpu")
    if module.mid is None:
        shape = (module.up.shape[0], *module.down.shape[1:])
        fact = factorise_product(module.up.reshape(shape[0], -1).to(device),
                                 module.down.reshape(module.rank, -1).to(device), target, shape)
    else:
        fact = factorise(module.delta().to(device) / scale, target)
    new_rank = int(fact.down.shape[0])
    alpha = None if module.alpha is None else scale * new_rank
    resized = LoraFactors(module.component, module.path, to_host(fact.down).to(dtype), to_host(fact.up).to(dtype),
                          alpha, None, module.dotted)
    return resized, fact.kept


def resize_lora(source: str | Path, output: str | Path, target: RankTarget, *, fmt: str | None = None,
                dtype: str | None = None, force: bool = False, progress: bool = False,
                device: str | torch.device | None = None) -> ResizeReport:
    """Write `source` at a new rank (fixed, or by energy), in its own layout unless `fmt` is given;
    the SVDs run on `device` ("cpu" by default, "cuda", "auto")."""
    out = check_output(output, [source], force)
    compute_on = resolve_device(device)
    lora = read_lora(source)
    out_dtype = parse_dtype(dtype) or lora.dtype
    report = ResizeReport(out)
    resized = []
    bar = Progress(len(lora.modules), "resize", progress)
    for module in lora.modules.values():
        new, kept = resize_factors(module, target, out_dtype, compute_on)
        resized.append(new)
        report.modules.append(ModuleResize(module.key, module.rank, new.rank, kept))
        bar.update()
    bar.close()
    metadata = {**lora.user_metadata(), **(rank_metadata(resized, fixed_rank=target.rank is not None) if "ss_network_dim" in lora.metadata else {}),
                **recipe_metadata("resize", inputs=describe_inputs([source]), rank=target.rank,
                                  energy=target.energy, conv_rank=target.conv_rank,
                                  min_kept=round(report.min_kept, 6))}
    write_lora(out, resized, fmt or lora.format, metadata, lora.family, embeddings=lora.embeddings)
    return report

