"""Extract a LoRA from a fine-tuned checkpoint and its base: SVD of each weight difference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from loraprompt.errors import ToolError
from loraprompt.keymaps import clip, unet
from loraprompt.quantized import SCALE_NAMES, fp8_scale
from loraprompt.tools.checkpoint import SINGLE_FILE_PREFIXES, Checkpoint, TensorReader, open_checkpoint
from loraprompt.tools.io import (
    Progress,
    check_output,
    describe_inputs,
    parse_dtype,
    rank_metadata,
    recipe_metadata,
    spec_nbytes,
)
from loraprompt.tools.lora import LoraFactors
from loraprompt.tools.naming import dotted_name
from loraprompt.tools.stream import overlapped, resolve_device, to_host
from loraprompt.tools.svd import RankTarget, factorise
from loraprompt.tools.writer import BASE_MODEL, write_lora

_LDM_TOP = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")
_TEXT_ROOTS = ("transformer.", "model.")


def _same_at(new: Tensor, old: Tensor) -> bool:
    """Whether two weights of different float dtypes are equal at the coarser one's precision: most
    fine-tunes are shared in fp16 while their base is fp32, so every weight the tuning left alone
    differs by the fp16 rounding, and factorising that rounding noise gave a module for each."""
    coarse = new.dtype if torch.finfo(new.dtype).eps >= torch.finfo(old.dtype).eps else old.dtype
    return torch.equal(new.to(coarse), old.to(coarse))


@dataclass(frozen=True)
class ExtractedModule:
    """One extracted module: its rank and the fraction of the difference's norm it keeps."""

    key: str
    rank: int
    kept: float


@dataclass
class ExtractReport:
    """What an extraction produced; `unchanged` counts weights whose difference was below min_diff."""

    output: Path
    family: str | None
    modules: list[ExtractedModule] = field(default_factory=list)
    unchanged: int = 0
    device: str = "cpu"

    @property
    def min_kept(self) -> float:
        return min((m.kept for m in self.modules), default=1.0)


def _relative(ckpt: Checkpoint, component: str, module: str) -> str:
    """The module's name inside its component (the single-file prefix and wrapper removed)."""
    if ckpt.layout != "single-file":
        return module
    for prefix, comp in SINGLE_FILE_PREFIXES:
        if comp == component and module.startswith(prefix):
            rel = module[len(prefix):]
            if component == "unet":
                return rel
            for root in _TEXT_ROOTS:
                if rel.startswith(root) and rel[len(root):].startswith(("text_model.", "transformer.resblocks.")):
                    return rel[len(root):]
            return rel
    return module


def _unet_path(rel: str, sgm: bool, up_attn: set[int]) -> str | None:
    """kohya path of a UNet module: SGM/LDM names for SDXL (as kohya writes them), diffusers otherwise."""
    is_ldm = rel.startswith(_LDM_TOP)
    if sgm:
        name = rel if is_ldm else unet.to_ldm(rel, up_attn)
    else:
        name = (unet.to_diffusers(rel) or unet.TOP_LEVEL_LDM.get(rel)) if is_ldm else rel
    return None if name is None else name.replace(".", "_")


def _text_paths(rel: str, param: str, rows: int) -> list[tuple[str, tuple[int, int] | None]]:
    """kohya paths (transformers-4 names) of a text-encoder weight, with row slices for fused q/k/v."""
    if param == "in_proj_weight":
        width = rows // 3
        return [(hf.replace(".", "_"), (i * width, (i + 1) * width))
                for i, (hf, _) in enumerate(clip.openclip_aliases(rel))]
    if param != "weight":
        return []
    aliases = clip.openclip_aliases(rel) if rel.startswith("transformer.resblocks.") else []
    name = aliases[0][0] if aliases else clip.hf_canonical(rel)
    if name is None or ".encoder.layers." not in name or not (".self_attn." in name or ".mlp." in name):
        return []
    return [(name.replace(".", "_"), None)]


def _candidates(ckpt: Checkpoint, base: Checkpoint, family: str | None) -> list[tuple[str, str, str, tuple[int, int] | None]]:
    """(component, tensor key, kohya path, rows) for every extractable weight present in both."""
    out: list[tuple[str, str, str, tuple[int, int] | None]] = []
    for component in sorted(ckpt.components()):
        specs = ckpt.component_specs(component)
        base_specs = base.component_specs(component)
        rels = {k: _relative(ckpt, component, k.rpartition(".")[0]) for k in specs}
        up_attn = unet.up_levels_with_attention(set(rels.values())) if component == "unet" else set()
        for key, (dtype, shape) in specs.items():
            if len(shape) not in (2, 4) or not dtype.is_floating_point:
                continue
            if key not in base_specs:
                raise ToolError(f"{base.root}: has no {key!r} (is it the base of {ckpt.root}?)")
            if base_specs[key][1] != shape:
                raise ToolError(f"{key}: shape {list(shape)} in {ckpt.root} but {list(base_specs[key][1])} in {base.root}")
            param = key.rpartition(".")[2]
            paths: list[tuple[str, tuple[int, int] | None]]
            if component == "unet":
                path = _unet_path(rels[key], family == "sdxl", up_attn) if param == "weight" else None
                paths = [] if path is None else [(path, None)]
            elif component == "transformer":  # SD3/Flux/Wan in diffusers names: one module per weight
                paths = [(rels[key].replace(".", "_"), None)] if param == "weight" else []
            else:
                paths = _text_paths(rels[key], param, shape[0])
            out += [(component, key, p, rows) for p, rows in paths]
    return out


def _fp8_scale(ckpt: Checkpoint, reader: TensorReader, component: str, key: str, weight: Tensor) -> Tensor | None:
    """The scale stored beside a scaled fp8 weight (`<module>.scale_weight`, ComfyUI), else None."""
    if weight.element_size() != 1 or not key.endswith(".weight"):
        return None
    for name in SCALE_NAMES:
        found = f"{key.removesuffix('.weight')}.{name}"
        if any(f.component_of.get(found) == component for f in ckpt.files):
            holder = torch.nn.Module()
            holder.register_buffer(name, reader.get(ckpt.locate(found, component), found))
            return fp8_scale(holder, "weight", weight)
    return None


def extract_lora(tuned: str | Path, base: str | Path, output: str | Path, target: RankTarget, *,
                 fmt: str | None = None, dtype: str | None = None, min_diff: float = 0.0,
                 components: tuple[str, ...] = ("unet", "transformer", "text_encoder", "text_encoder_2"),
                 force: bool = False, progress: bool = False, device: str | torch.device | None = None,
                 variant: str | None = None) -> ExtractReport:
    """A LoRA approximating `tuned - base` per module (rank or energy target); weights whose largest
    absolute difference is <= `min_diff` are left out. Both files are read ahead in a thread while
    the differences are factorised on `device` ("cpu" by default, "cuda", "auto"); a weight whose
    bytes are equal in both, or that are equal at the coarser precision of the two (an fp16 tune of
    an fp32 base), is skipped without arithmetic. Memory: the read-ahead budget (128 MiB)
    plus one weight's float32 difference and its SVD work, and the extracted factors."""
    from loraprompt.keymaps import build_keymap

    out = check_output(output, [tuned, base], force)
    if min_diff < 0:
        raise ToolError(f"min_diff must be >= 0, got {min_diff}")
    compute_on = resolve_device(device)
    ckpt, ref = open_checkpoint(tuned, variant), open_checkpoint(base, variant)
    if ckpt.layout != ref.layout:
        raise ToolError(f"{tuned} is {ckpt.layout} but {base} is {ref.layout}; give both in one layout")
    denoiser = "transformer" if "transformer" in ckpt.components() else "unet"
    unet_specs = ckpt.component_specs(denoiser)
    family = build_keymap(denoiser, sorted({k.rpartition(".")[0] for k in unet_specs}),
                          {k: s for k, (_, s) in unet_specs.items()}).family
    # kohya for SD1/SD2/SDXL; for SD3/Flux/Wan folders PEFT (`transformer.<module>.lora_A.weight`),
    # which diffusers' load_lora_weights and ComfyUI read (`lora_transformer_…`: ComfyUI, not diffusers)
    fmt = fmt or ("peft" if denoiser == "transformer" else "kohya")
    out_dtype = parse_dtype(dtype)
    report = ExtractReport(out, family, device=str(compute_on))
    modules: list[LoraFactors] = []
    todo = [c for c in _candidates(ckpt, ref, family) if c[0] in components]
    if fmt == "peft":  # a module PEFT cannot name fails here, not after all the SVDs
        for component, _, path, _ in todo:
            if component != "transformer":
                dotted_name(component, path)
    weights: dict[tuple[str, str], list[tuple[str, tuple[int, int] | None]]] = {}
    for component, key, path, rows in todo:  # q/k/v slices of one fused weight: one read, one difference
        weights.setdefault((component, key), []).append((path, rows))
    bar = Progress(len(todo), "extract", progress)

    fp8_sources: set[tuple[str, str]] = set()

    def load(item: tuple[str, str]) -> tuple[Tensor, Tensor | None]:
        component, key = item
        new = tuned_reader.get(ckpt.locate(key, component), key)
        old = base_reader.get(ref.locate(key, component), key)
        new_scale, old_scale = _fp8_scale(ckpt, tuned_reader, component, key, new), _fp8_scale(ref, base_reader, component, key, old)
        same_scale = new_scale is old_scale or (new_scale is not None and old_scale is not None and torch.equal(new_scale, old_scale))
        if new.dtype == old.dtype and torch.equal(new.view(torch.uint8), old.view(torch.uint8)) and same_scale:
            return new[:0], None  # bit-identical: nothing to extract, nothing kept in memory
        if new.dtype != old.dtype and min(new.element_size(), old.element_size()) > 1 and _same_at(new, old):
            return new[:0], None  # the same weight stored at another precision (an fp16 fine-tune of an fp32 base)
        if new.element_size() == 1:  # fp8 (scaled: times its scale); the factors come out in bf16
            new = new.float() * new_scale if new_scale is not None else new.float()
            old = old.float() * old_scale if old_scale is not None else old.float()
            fp8_sources.add(item)
        return new, old

    def compute(item: tuple[str, str], loaded: tuple[Tensor, Tensor | None]) -> list[tuple[str, Any]]:
        new, old = loaded
        cast = out_dtype or (torch.bfloat16 if item in fp8_sources else new.dtype)
        if old is None:
            return [(path, None) for path, _ in weights[item]]
        full = new.to(compute_on).float() - old.to(compute_on).float()
        results: list[tuple[str, Any]] = []
        for path, rows in weights[item]:
            delta = full if rows is None else full[rows[0]: rows[1]]
            if float(delta.abs().max()) <= min_diff:
                results.append((path, None))
                continue
            fact = factorise(delta, target)
            results.append((path, (to_host(fact.down).to(cast), to_host(fact.up).to(cast), fact.kept)))
        return results

    def store(item: tuple[str, str], results: list[tuple[str, Any]]) -> None:
        component = item[0]
        for path, found in results:
            bar.update()
            if found is None:
                report.unchanged += 1
                continue
            down, up, kept = found
            dotted = item[1].rpartition(".")[0] if component == "transformer" else None  # diffusers folder: its own name
            modules.append(LoraFactors(component, path, down, up, dotted=dotted))
            report.modules.append(ExtractedModule(f"{component}/{path}", int(down.shape[0]), kept))

    def size(item: tuple[str, str]) -> int:
        dtype, shape = ckpt.locate(item[1], item[0]).specs[item[1]]
        return 2 * spec_nbytes(dtype, shape)

    with TensorReader(ckpt) as tuned_reader, TensorReader(ref) as base_reader:
        overlapped(list(weights), load, compute, store, size=size)
    bar.close()
    if not modules:
        raise ToolError(f"{tuned} and {base} do not differ in any extractable weight (min_diff={min_diff})")
    # kohya's own extract script writes these: galleries show the rank and base model from them
    metadata = {"ss_network_module": "networks.lora", **rank_metadata(modules), **BASE_MODEL.get(family or "", {}),
                **recipe_metadata("extract", inputs=describe_inputs([p for p in (tuned, base) if Path(p).is_file()]),
                                  rank=target.rank, energy=target.energy, conv_rank=target.conv_rank,
                                  min_diff=min_diff, min_kept=round(report.min_kept, 6),
                                  **({"variant": variant} if variant else {}))}
    write_lora(out, modules, fmt, metadata, family)
    return report
