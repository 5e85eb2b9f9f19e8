"""Merge LoRAs into a checkpoint at UNet/text-encoder strengths, streaming one tensor at a time.

The plan is the patcher's (`loraprompt.plan` over the checkpoint's own key maps) and so is the
arithmetic: per weight, the float32 base plus each contribution's delta (unit delta times
strength for linear adapters), cast once. The merged file holds the weights `Patcher.sync` gives
the loaded model (to float32 rounding: the patcher may fuse a plain LoRA's up @ down into one addmm).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import PatchError, ToolError
from loraprompt.tools.checkpoint import Checkpoint, TensorFile, TensorReader, open_checkpoint
from loraprompt.tools.io import (
    Progress,
    StreamingWriter,
    atomic_path,
    check_output,
    describe_inputs,
    parse_dtype,
    recipe_metadata,
    spec_nbytes,
)

# (adapter module, rows of a fused parameter or None, strength), as in loraprompt.plan
Contribution = tuple[Any, "tuple[int, int] | None", float]
Parts = list[tuple[Tensor, "tuple[int, int] | None", float]]


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to merge: its file and its text-encoder and UNet strengths."""

    path: str | Path
    te: float = 1.0
    unet: float = 1.0


@dataclass
class MergeReport:
    """What a checkpoint merge did."""

    output: Path
    layout: str
    family: str | None
    weights_changed: int = 0
    tensors_written: int = 0
    diagnostics: list[Diagnostic] = field(default_factory=list)


def _as_spec(item: LoraSpec | tuple[Any, ...] | str | Path) -> LoraSpec:
    if isinstance(item, LoraSpec):
        return item
    if isinstance(item, tuple):
        path, te, *rest = item
        return LoraSpec(path, float(te), float(rest[0]) if rest else float(te))
    return LoraSpec(item)


def _keymaps(ckpt: Checkpoint) -> dict[str, Any]:
    from loraprompt.keymaps import build_keymap

    out = {}
    for component in sorted(ckpt.components() & {"unet", "text_encoder", "text_encoder_2"}):
        specs = ckpt.component_specs(component)
        names = sorted({k.rpartition(".")[0] for k in specs})
        out[component] = build_keymap(component, names, {k: s for k, (_, s) in specs.items()})
    return out


def plan_merge(ckpt: Checkpoint, loras: Sequence[LoraSpec], family: str | None = None
               ) -> tuple[dict[tuple[str, str], tuple[Contribution, ...]], str | None, list[Diagnostic]]:
    """(component, tensor key) -> contributions, the checkpoint's family (detected when `family` is
    None; "" skips the family check), and per-LoRA diagnostics."""
    from loraprompt.adapters import read_adapter
    from loraprompt.plan import build_plan, resolve_adapter

    keymaps = _keymaps(ckpt)
    if family is None:
        family = keymaps["unet"].family if "unet" in keymaps else None
    resolved, diagnostics = [], []
    for spec in loras:
        adapter = read_adapter(spec.path)
        try:
            resolution = resolve_adapter(adapter, keymaps, family or None)
        except PatchError as exc:
            raise ToolError(str(exc)) from exc
        diagnostics.extend(resolution.diagnostics)
        resolved.append((resolution, spec.te, lambda _block, s=spec.unet: s))
    plan = build_plan(resolved)
    return {(c, f"{m}.{p}"): contribs for (c, m, p), contribs in plan.items()}, family, diagnostics


def _bias_key(weight_key: str) -> str:
    stem, _, param = weight_key.rpartition(".")
    return f"{stem}.{'bias' if param == 'weight' else param.replace('weight', 'bias')}"


def _parts(contribs: tuple[Contribution, ...], w32: Tensor, b32: Tensor | None, where: str) -> tuple[Parts, Parts]:
    """Float32 weight and bias parts (delta, rows, scale) from the float32 base weight and bias."""
    w_parts: Parts = []
    b_parts: Parts = []
    for module, rows, strength in contribs:
        linear = module.linear
        w, b = w32, b32
        if rows is not None:
            w = w32[rows[0]: rows[1]]
            b = b32[rows[0]: rows[1]] if b32 is not None else None
        try:
            dw, db = module.delta(w, 1.0 if linear else strength, b)
        except (ValueError, RuntimeError) as exc:
            raise ToolError(f"{module.lora_key} -> {where}: {exc}") from exc
        if dw is not None and dw.shape != w.shape:
            raise ToolError(f"{module.lora_key} -> {where}: delta shape {tuple(dw.shape)} != weight {tuple(w.shape)}")
        scale = strength if linear else 1.0
        if dw is not None:
            w_parts.append((dw, rows, scale))
        if db is not None:
            if b is None or db.shape != b.shape:
                raise ToolError(f"{module.lora_key} -> {where}: bias delta does not fit the module's bias")
            b_parts.append((db, rows, scale))
    return w_parts, b_parts


def _apply(acc: Tensor, parts: Parts) -> Tensor:
    """acc (a float32 tensor of our own) += Σ scale·Δ, in the patcher's order of additions."""
    for delta, rows, scale in parts:
        (acc if rows is None else acc[rows[0]: rows[1]]).add_(delta, alpha=scale)
    return acc


class _Merger:
    """Streams one checkpoint file, merging planned weights and their biases."""

    def __init__(self, reader: TensorReader, plan: dict[tuple[str, str], tuple[Contribution, ...]],
                 dtype: torch.dtype | None) -> None:
        self.reader = reader
        self.plan = plan
        self.dtype = dtype
        self.pending: dict[tuple[str, str], Parts] = {}
        self.present = {(c, k) for f in reader.checkpoint.files for k, c in f.component_of.items()}
        self.bias_of = {(c, _bias_key(k)): k for c, k in plan if (c, _bias_key(k)) in self.present}
        self.changed = 0

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def tensor(self, file: TensorFile, key: str) -> Tensor:
        """The output tensor for `key` of `file`."""
        tensor = self.reader.get(file, key)  # a fresh buffer: ours to modify in place
        component = file.component_of.get(key)
        parts: Parts = []
        acc = tensor
        if component is not None and (component, key) in self.plan:
            acc = tensor.float()
            parts, bias_parts = self._compute(component, key, acc)
            if (component, _bias_key(key)) in self.bias_of:  # kept (even empty) so the bias is not recomputed
                self.pending[(component, _bias_key(key))] = bias_parts
        elif component is not None and (component, key) in self.bias_of:
            found = self.pending.pop((component, key), None)
            parts = found if found is not None else self._compute(component, self.bias_of[(component, key)])[1]
            acc = tensor.float() if parts else tensor
        if parts:
            self.changed += 1
            return _apply(acc, parts).to(self.out_dtype(tensor.dtype))
        return tensor.to(self.out_dtype(tensor.dtype))

    def _compute(self, component: str, weight_key: str, weight: Tensor | None = None) -> tuple[Parts, Parts]:
        """(weight parts, bias parts) of one planned weight (given in float32), reading what is not given."""
        ckpt = self.reader.checkpoint
        if weight is None:
            weight = self.reader.get(ckpt.locate(weight_key, component), weight_key).float()
        bias_key = _bias_key(weight_key)
        bias = None
        if (component, bias_key) in self.present:
            bias = self.reader.get(ckpt.locate(bias_key, component), bias_key).float()
        return _parts(self.plan[(component, weight_key)], weight, bias, f"{component}:{weight_key}")


def _ordered(file: TensorFile) -> list[str]:
    """Keys with each module's weight before its bias, so a bias delta is ready when needed."""
    return sorted(file.specs, key=lambda k: (k.rpartition(".")[0], "bias" in k.rpartition(".")[2], k))


def _write_file(merger: _Merger, file: TensorFile, target: Path, metadata: dict[str, str], bar: Progress) -> int:
    keys = _ordered(file)
    specs = [(k, merger.out_dtype(file.specs[k][0]), file.specs[k][1]) for k in keys]
    with open(target, "wb") as handle:
        writer = StreamingWriter(handle, specs, metadata)
        for key in keys:
            writer.write(key, merger.tensor(file, key))
            bar.update(spec_nbytes(*file.specs[key]))
        writer.close()
    return len(keys)



def merge_checkpoint(checkpoint: str | Path, loras: Sequence[LoraSpec | tuple[Any, ...] | str | Path],
                     output: str | Path, *, dtype: str | None = None, layout: str | None = None,
                     configs: Mapping[str, Any] | None = None, family: str | None = None,
                     force: bool = False, progress: bool = False) -> MergeReport:
    """Write `checkpoint` with `loras` merged in: in its own layout, or in the other one (a single
    file as a diffusers folder with the shipped configs of its family or `configs`; a diffusers
    folder's unet/text encoders/vae as one original-layout file).
    `family` overrides the detected one ("" skips the check)."""
    specs = [_as_spec(item) for item in loras]
    if not specs:
        raise ToolError("no LoRAs to merge")
    if layout not in (None, "single-file", "diffusers"):
        raise ToolError(f"unknown layout {layout!r}; choose single-file or diffusers")
    out = check_output(output, [checkpoint, *(s.path for s in specs)], force)
    out_dtype = parse_dtype(dtype)
    ckpt = open_checkpoint(checkpoint)
    target = layout or ckpt.layout
    plan, found, diagnostics = plan_merge(ckpt, specs, family)
    recipe = recipe_metadata(
        "merge", checkpoint=describe_inputs([ckpt.root])[0] if ckpt.layout == "single-file" else ckpt.root.name,
        loras=[{**d, "te": s.te, "unet": s.unet} for d, s in zip(describe_inputs([s.path for s in specs]), specs)],
        dtype=dtype, layout=target)
    report = MergeReport(out, target, found or None, diagnostics=diagnostics)
    bar = Progress(ckpt.nbytes, "merge", progress)
    with TensorReader(ckpt) as reader:
        merger = _Merger(reader, plan, out_dtype)
        if target == "single-file" and ckpt.layout == "single-file":
            file = ckpt.files[0]
            with atomic_path(out) as tmp:
                report.tensors_written = _write_file(merger, file, tmp, {**file.metadata, **recipe}, bar)
        elif target == "single-file":
            from loraprompt.tools.to_single import write_single

            if not found:
                raise ToolError(f"{ckpt.root}: model family unknown; cannot pick the single-file names")
            with atomic_path(out) as tmp:
                report.tensors_written = write_single(ckpt, merger.tensor, found, tmp, out_dtype=merger.out_dtype,
                                                      metadata=recipe, bar=bar)
        elif ckpt.layout == "diffusers":
            with _staged(out, force) as staging:
                report.tensors_written = _copy_folder(merger, ckpt, staging, recipe, bar)
        else:
            from loraprompt.tools.layout import write_diffusers

            if not found:
                raise ToolError(f"{ckpt.root}: model family unknown; cannot pick diffusers configs")
            with _staged(out, force) as staging:
                report.tensors_written = write_diffusers(ckpt, merger.tensor, found, staging, configs=configs,
                                                           metadata=recipe, bar=bar)
    bar.close()
    report.weights_changed = merger.changed
    return report


@contextmanager
def _staged(out: Path, force: bool) -> Iterator[Path]:
    """A staging folder beside `out`, swapped in on success (replacing `out` when forced), removed on failure."""
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        if out.exists() and force:
            old = out.parent / f".{out.name}.old"
            out.rename(old)
            staging.rename(out)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_folder(merger: _Merger, ckpt: Checkpoint, staging: Path, recipe: dict[str, str], bar: Progress) -> int:
    """A diffusers folder: weight files merged, everything else copied."""
    weights = {f.path for f in ckpt.files}
    shutil.copytree(ckpt.root, staging, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if Path(d, n) in weights])
    written = 0
    for file in ckpt.files:
        target = staging / file.path.relative_to(ckpt.root)
        written += _write_file(merger, file, target, {**file.metadata, **recipe}, bar)
    return written
