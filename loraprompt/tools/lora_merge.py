"""Merge several LoRAs into one: exactly (ranks concatenated) or by SVD to a target rank."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from loraprompt.errors import ToolError
from loraprompt.tools.io import (
    Progress,
    check_output,
    describe_inputs,
    parse_dtype,
    rank_metadata,
    recipe_metadata,
)
from loraprompt.tools.lora import LoraFactors, LoraSet, read_lora
from loraprompt.tools.naming import dotted_name, is_ldm_unet, ldm_dotted, native_entry
from loraprompt.tools.svd import RankTarget, factorise, factorise_product
from loraprompt.tools.writer import diffusers_modules, write_lora


@dataclass(frozen=True)
class LoraMergeReport:
    """What a LoRA merge produced: module count and the smallest kept-norm fraction (1.0 when exact)."""

    output: Path
    modules: int
    min_kept: float


def _concat(key: str, parts: Sequence[tuple[LoraFactors, float]], dtype: torch.dtype) -> LoraFactors:
    """Exact merge: up = [w1·s1·up1 | w2·s2·up2 …], down = [down1; down2 …], alpha = rank (scale 1)."""
    if any(m.mid is not None for m, _ in parts):
        raise ToolError(f"{key}: CP/Tucker (lora_mid) modules cannot be concatenated; use a target rank")
    ups = [m.up.float() * (w * m.scale) for m, w in parts]
    downs = [m.down.float() for m, _ in parts]
    if len({tuple(d.shape[1:]) for d in downs}) != 1 or len({u.shape[0] for u in ups}) != 1:
        shapes = sorted({(u.shape[0], *d.shape[1:]) for u, d in zip(ups, downs)})
        raise ToolError(f"{key}: inputs target different shapes {shapes}")
    first = parts[0][0]
    down = torch.cat(downs, 0).to(dtype)
    return LoraFactors(first.component, first.path, down, torch.cat(ups, 1).to(dtype), None, None, first.dotted)


def _svd(key: str, parts: Sequence[tuple[LoraFactors, float]], target: RankTarget,
         dtype: torch.dtype) -> tuple[LoraFactors, float]:
    first = parts[0][0]
    if all(m.mid is None for m, _ in parts):
        cat = _concat(key, parts, torch.float32)  # Σ w·ΔW = [w·s·up …] @ [down …]: SVD it without forming it
        shape = (cat.up.shape[0], *cat.down.shape[1:])
        fact = factorise_product(cat.up.reshape(shape[0], -1), cat.down.reshape(cat.rank, -1), target, shape)
    else:
        deltas = [m.delta() * w for m, w in parts]
        if len({tuple(d.shape) for d in deltas}) != 1:
            raise ToolError(f"{key}: inputs target different shapes {sorted({tuple(d.shape) for d in deltas})}")
        fact = factorise(torch.stack(deltas).sum(0), target)
    return LoraFactors(first.component, first.path, fact.down.to(dtype), fact.up.to(dtype), None, None,
                       first.dotted), fact.kept


def _sd_unet(module: LoraFactors, family: str | None) -> bool:
    return module.component == "unet" and native_entry(module.path, family) is None


def _respell(module: LoraFactors, ldm: bool, family: str | None) -> LoraFactors:
    """An SD UNet module under LDM/SGM (`ldm`) or diffusers kohya spelling; as it is when it has no other."""
    if is_ldm_unet(module.path) == ldm:
        return module
    try:
        name = ldm_dotted("unet", module.path, module.dotted, family) if ldm else dotted_name("unet", module.path)
    except ToolError:
        return module
    return LoraFactors("unet", name.replace(".", "_"), module.down, module.up, module.alpha, module.mid,
                       None if ldm else name)


def merge_loras(sources: Sequence[str | Path], weights: Sequence[float], output: str | Path, *,
                target: RankTarget | None = None, fmt: str | None = None, dtype: str | None = None,
                force: bool = False, progress: bool = False) -> LoraMergeReport:
    """Σ weight_i · ΔW_i as one LoRA: exact when `target` is None, else SVD to the target rank."""
    if not sources:
        raise ToolError("no LoRAs to merge")
    if len(weights) != len(sources):
        raise ToolError(f"{len(sources)} LoRAs but {len(weights)} weights")
    out = check_output(output, sources, force)
    loras: list[LoraSet] = [read_lora(s) for s in sources]
    if len({lora.family for lora in loras if lora.family}) > 1:
        raise ToolError("LoRAs for different model families cannot be merged: "
                        + ", ".join(f"{lora.path} is {lora.family}" for lora in loras))
    out_dtype = parse_dtype(dtype) or loras[0].dtype
    # a transformer adapted under both namings (a PEFT file's to_q, a kohya file's fused qkv): the
    # native modules become their diffusers modules (exact), so each weight is one merged module
    named = {m.component == "transformer" for lora in loras for m in lora.modules.values()}
    # an SD UNet adapted under both spellings (sd-scripts' SGM input_blocks_4_1, diffusers' down_blocks_1):
    # every module takes the first input's, so each weight is one merged module
    ldm = next((is_ldm_unet(m.path) for lora in loras for m in lora.modules.values() if _sd_unet(m, lora.family)), False)
    grouped: dict[str, list[tuple[LoraFactors, float]]] = {}
    for lora, weight in zip(loras, weights):
        for module in lora.modules.values():
            if _sd_unet(module, lora.family):
                module = _respell(module, ldm, lora.family)
            for part in diffusers_modules(module, lora.family) if named == {True, False} else [module]:
                grouped.setdefault(part.key, []).append((part, float(weight)))
    merged, min_kept = [], 1.0
    bar = Progress(len(grouped), "merge", progress)
    for key, parts in grouped.items():
        if target is None:
            merged.append(_concat(key, parts, out_dtype))
        else:
            module, kept = _svd(key, parts, target, out_dtype)
            merged.append(module)
            min_kept = min(min_kept, kept)
        bar.update()
    bar.close()
    metadata = {"ss_network_module": "networks.lora", **rank_metadata(merged), **_shared_base(loras),
                **recipe_metadata("merge-loras", inputs=describe_inputs(sources), weights=list(weights),
                               rank=None if target is None else target.rank,
                               energy=None if target is None else target.energy)}
    write_lora(out, merged, fmt or loras[0].format, metadata, loras[0].family, embeddings=_embeddings(loras))
    return LoraMergeReport(out, len(merged), min_kept)


def _shared_base(loras: Sequence[LoraSet]) -> dict[str, str]:
    """The inputs' base-model fields (kohya's, and the model they were trained on) where every
    input agrees: what galleries and A1111's version filter read; the writer fills in the family's
    when none is left."""
    keys = ("ss_base_model_version", "ss_v2", "ss_sd_model_name", "modelspec.architecture")
    out: dict[str, str] = {}
    for key in keys:
        values = {lora.metadata.get(key) for lora in loras}
        value = values.pop() if len(values) == 1 else None
        if value is not None:
            out[key] = value
    return out


def _embeddings(loras: list[LoraSet]) -> dict[str, Tensor]:
    """Every input's bundled embeddings (A1111's `bundle_emb.*`), kept as they are: not weighted,
    an embedding is a token's vectors, not a delta; one key two inputs hold differently is refused."""
    found: dict[str, Tensor] = {}
    owner: dict[str, str] = {}
    for lora in loras:
        for key, tensor in lora.embeddings.items():
            if key in found and not torch.equal(found[key], tensor):
                raise ToolError(f"{key}: {owner[key]} and {lora.path} bundle different embeddings for one token; "
                                "merge LoRAs that bundle other tokens, or drop one")
            found.setdefault(key, tensor)
            owner.setdefault(key, lora.path)
    return found

