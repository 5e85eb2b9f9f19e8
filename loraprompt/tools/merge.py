"""Merge LoRAs into a checkpoint at UNet/text-encoder strengths, streaming one tensor at a time.

The plan is the patcher's (`loraprompt.plan` over the checkpoint's own key maps) and so is the
arithmetic (`loraprompt.combine.combined`, the step `Patcher.sync` writes with): each planned
weight is the bit-exact value the patcher gives the model loaded in the output dtype (the
checkpoint's own unless `dtype` is given).
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

from loraprompt.combine import combined
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
    for component in sorted(ckpt.components() & {"unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"}):
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
        family = next((keymaps[c].family for c in ("unet", "transformer") if c in keymaps), None)
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


class _Merger:
    """Streams one checkpoint file, merging planned weights and their biases."""

    def __init__(self, reader: TensorReader, plan: dict[tuple[str, str], tuple[Contribution, ...]],
                 dtype: torch.dtype | None) -> None:
        self.reader = reader
        self.plan = plan
        self.dtype = dtype
        self.pending: dict[tuple[str, str], Tensor | None] = {}
        self.present = {(c, k) for f in reader.checkpoint.files for k, c in f.component_of.items()}
        self.bias_of = {(c, _bias_key(k)): k for c, k in plan if (c, _bias_key(k)) in self.present}
        self.changed = 0

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def tensor(self, file: TensorFile, key: str) -> Tensor:
        """The output tensor for `key` of `file`: the patcher's result on the model loaded in the
        output dtype when planned (or the bias of a planned weight), else the tensor cast."""
        component = file.component_of.get(key)
        if component is not None and (component, key) in self.bias_of:
            if (component, key) in self.pending:
                bias = self.pending.pop((component, key))
            else:
                bias = self._merge(component, self.bias_of[(component, key)])[1]
            if bias is not None:
                self.changed += 1
                return bias
        tensor = self.reader.get(file, key)
        tensor = tensor.to(self.out_dtype(tensor.dtype))
        if component is not None and (component, key) in self.plan:
            merged, bias = self._merge(component, key, tensor)
            if (component, _bias_key(key)) in self.bias_of:  # kept (even unchanged) so it is not recomputed
                self.pending[(component, _bias_key(key))] = bias
            self.changed += 1
            return merged
        return tensor

    def _merge(self, component: str, weight_key: str, weight: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """`combined` for one planned weight (given in the output dtype, else read): the new weight
        and the new bias (None when the bias is unchanged)."""
        ckpt = self.reader.checkpoint
        if weight is None:
            weight = self.reader.get(ckpt.locate(weight_key, component), weight_key)
            weight = weight.to(self.out_dtype(weight.dtype))
        bias_key = _bias_key(weight_key)
        bias = None
        if (component, bias_key) in self.present:
            bias = self.reader.get(ckpt.locate(bias_key, component), bias_key)
            bias = bias.to(self.out_dtype(bias.dtype))
        try:
            return combined(weight, bias, self.plan[(component, weight_key)], f"{component}:{weight_key}")
        except PatchError as exc:
            raise ToolError(str(exc)) from exc


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
