"""Merge LoRAs into a checkpoint at UNet/text-encoder strengths, streaming one tensor at a time.

The plan is the patcher's (`loraprompt.plan` over the checkpoint's own key maps) and so is the
arithmetic (`loraprompt.combine.combined`, the step `Patcher.sync` writes with; `tools.arith` runs
it with reused float32 buffers): each planned weight is the bit-exact value the patcher gives the model loaded in the output dtype (the
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

from loraprompt.diagnostics import Diagnostic
from loraprompt.errors import PatchError, ToolError
from loraprompt.quantized import SCALE_NAMES, fp8_scale
from loraprompt.tools.arith import Workspace, merged_weight
from loraprompt.tools.checkpoint import Checkpoint, TensorFile, TensorReader, open_checkpoint
from loraprompt.tools.io import (
    Progress,
    StreamingWriter,
    atomic_path,
    check_output,
    check_replace,
    describe_inputs,
    parse_dtype,
    recipe_metadata,
    spec_nbytes,
)
from loraprompt.tools.stream import overlapped, resolve_device, to_host

RECYCLE = 96 << 20  # bytes of written outputs kept to be reused
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
    device: str = "cpu"
    buffers: dict[str, int] = field(default_factory=dict)  # peak bytes held by the read-ahead/write-behind


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
        if adapter.embeddings:  # a token's vectors, not a weight delta: a checkpoint has no place for them
            diagnostics.append(Diagnostic(
                "W-EMBEDDING-NOT-MERGED", f"its bundled embedding(s) {', '.join(sorted(adapter.embeddings))} are not "
                "in the merged checkpoint (a checkpoint has no place for a new token): keep using the LoRA file "
                "for them, or save them as textual-inversion embeddings", subject=str(spec.path)))
        resolved.append((resolution, spec.te, lambda _block, s=spec.unet: s))
    plan = build_plan(resolved)
    return {(c, f"{m}.{p}"): contribs for (c, m, p), contribs in plan.items()}, family, diagnostics


def _bias_key(weight_key: str) -> str:
    stem, _, param = weight_key.rpartition(".")
    return f"{stem}.{'bias' if param == 'weight' else param.replace('weight', 'bias')}"


@dataclass(frozen=True)
class _Copy:
    """An unchanged tensor: its bytes are copied from the input file to the output as they are."""

    file: TensorFile
    key: str


class _Merger:
    """Merges planned weights and their biases, key by key: `load` only reads (it runs in the
    read-ahead thread), `finish` computes (on `device`) and keeps the state."""

    def __init__(self, reader: TensorReader, plan: dict[tuple[str, str], tuple[Contribution, ...]],
                 dtype: torch.dtype | None, device: torch.device | None = None) -> None:
        self.reader = reader
        self.plan = plan
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        self.pending: dict[tuple[str, str], Tensor | None] = {}
        self.present = {(c, k) for f in reader.checkpoint.files for k, c in f.component_of.items()}
        self.bias_of = {(c, _bias_key(k)): k for c, k in plan if (c, _bias_key(k)) in self.present}
        self.changed = 0
        self.workspace = Workspace(keep=RECYCLE)  # float32 buffers and outputs, reused weight to weight

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def _cast(self, tensor: Tensor) -> Tensor:
        return tensor.to(self.out_dtype(tensor.dtype))

    def load(self, file: TensorFile, key: str, reader: TensorReader | None = None) -> Any:
        """What `finish` needs for `key`, read with `reader` (default: the merger's): the tensor, the
        (weight, bias or None) of a planned weight, a `_Copy` for a tensor written unchanged, or None
        for a bias the weight's merge gives. Reads only, so it can run in another thread."""
        reader = reader or self.reader
        component = file.component_of.get(key)
        if component is not None and (component, key) in self.bias_of:
            weight_key = self.bias_of[(component, key)]
            if weight_key in file.specs and _ordered_before(weight_key, key):
                return None  # the weight's merge (earlier in this file) gives the bias
        if component is not None and (component, key) in self.plan:
            bias_key = _bias_key(key)
            bias = None
            if (component, bias_key) in self.present:
                bias = reader.get(self.reader.checkpoint.locate(bias_key, component), bias_key)
            return reader.get(file, key), bias
        return self._unchanged(file, key, reader)

    def _unchanged(self, file: TensorFile, key: str, reader: TensorReader) -> Tensor | _Copy:
        dtype = file.specs[key][0]
        return _Copy(file, key) if self.out_dtype(dtype) == dtype else reader.get(file, key)

    def copied(self, file: TensorFile, key: str) -> bool:
        """Whether `key` is written as the input's bytes (not planned, not a planned weight's bias,
        dtype kept): it then holds no memory on its way through."""
        component = file.component_of.get(key)
        if component is not None and ((component, key) in self.plan or (component, key) in self.bias_of):
            return False
        return self.out_dtype(file.specs[key][0]) == file.specs[key][0]

    def finish(self, file: TensorFile, key: str, loaded: Any) -> Tensor | _Copy:
        """The output for `key` of `file`: the patcher's result on the model loaded in the output
        dtype when planned (or the bias of a planned weight), else the tensor (cast, or copied)."""
        component = file.component_of.get(key)
        if component is not None and (component, key) in self.bias_of:
            if (component, key) in self.pending:
                bias = self.pending.pop((component, key))
            else:
                bias = self._merge(component, self.bias_of[(component, key)])[1]
            if bias is not None:
                self.changed += 1
                return bias
            if loaded is None:  # an unchanged bias, not read ahead
                loaded = self._unchanged(file, key, self.reader)
        if isinstance(loaded, _Copy):
            return loaded
        if isinstance(loaded, tuple):
            weight, bias = loaded
            merged, new_bias = self._merge(component or "", key, weight, bias)
            if (component, _bias_key(key)) in self.bias_of:  # kept (even unchanged) so it is not recomputed
                self.pending[(component or "", _bias_key(key))] = new_bias
            self.changed += 1
            return merged
        return self._cast(loaded)

    def tensor(self, file: TensorFile, key: str) -> Tensor:
        """The output tensor for `key` of `file`, read and computed now (for the layout converters)."""
        out = self.finish(file, key, self.load(file, key))
        return self.reader.get(out.file, out.key) if isinstance(out, _Copy) else out

    def _merge(self, component: str, weight_key: str, weight: Tensor | None = None, bias: Tensor | None = None
               ) -> tuple[Tensor, Tensor | None]:
        """`combined` for one planned weight (and its bias; both read when not given), computed on
        the merger's device in the output dtype: the new weight and the new bias (None when the
        bias is unchanged), on the CPU."""
        ckpt = self.reader.checkpoint
        if weight is None:
            weight = self.reader.get(ckpt.locate(weight_key, component), weight_key)
            bias_key = _bias_key(weight_key)
            if (component, bias_key) in self.present:
                bias = self.reader.get(ckpt.locate(bias_key, component), bias_key)
        scale = self._scale(component, weight_key, weight)
        weight = self._cast(weight.to(self.device))
        bias = None if bias is None else self._cast(bias.to(self.device))
        try:
            new_w, new_b = merged_weight(weight, bias, self.plan[(component, weight_key)],
                                         f"{component}:{weight_key}", ws=self.workspace, scale=scale)
        except PatchError as exc:
            raise ToolError(str(exc)) from exc
        return to_host(new_w), None if new_b is None else to_host(new_b)


    def _scale(self, component: str, weight_key: str, weight: Tensor) -> Tensor | None:
        """The dequantisation scale stored beside a scaled fp8 weight (`<module>.scale_weight`, as
        ComfyUI writes them, or `.weight_scale`); ToolError when the output would cast it."""
        if weight.element_size() != 1 or not weight_key.endswith(".weight"):
            return None
        stem = weight_key.removesuffix(".weight")
        for name in SCALE_NAMES:
            key = f"{stem}.{name}"
            if (component, key) in self.present:
                if self.out_dtype(weight.dtype) != weight.dtype:
                    raise ToolError(f"{component}:{weight_key} is scaled fp8 ({key}); write it in its own dtype (no --dtype)")
                holder = torch.nn.Module()
                holder.register_buffer(name, self.reader.get(self.reader.checkpoint.locate(key, component), key))
                return fp8_scale(holder, "weight", weight)
        return None


def _order_key(key: str) -> tuple[str, bool, str]:
    module, _, param = key.rpartition(".")
    return module, "bias" in param, key


def _ordered_before(first: str, second: str) -> bool:
    return _order_key(first) < _order_key(second)


def _ordered(file: TensorFile) -> list[str]:
    """Keys with each module's weight before its bias, so a bias delta is ready when needed."""
    return sorted(file.specs, key=_order_key)


def _write_file(merger: _Merger, file: TensorFile, target: Path, metadata: dict[str, str], bar: Progress, *,
                stats: dict[str, int] | None = None) -> int:
    """One output file: keys read ahead in a thread (with their own file handles), merged here,
    written behind in another thread; unchanged tensors are copied file to file."""
    keys = _ordered(file)
    specs = [(k, merger.out_dtype(file.specs[k][0]), file.specs[k][1]) for k in keys]

    def size(key: str) -> int:
        dtype, shape = file.specs[key]
        if merger.copied(file, key):
            return 0
        return max(spec_nbytes(dtype, shape), spec_nbytes(merger.out_dtype(dtype), shape))

    with TensorReader(merger.reader.checkpoint) as ahead, open(file.path, "rb") as source, \
            open(target, "wb", buffering=0) as handle:
        writer = StreamingWriter(handle, specs, metadata)

        def store(key: str, out: Tensor | _Copy) -> None:
            if isinstance(out, _Copy):
                writer.copy(key, source, *file.layout.ranges[key])
            else:
                writer.write(key, out)
                merger.workspace.recycle(out)  # written: its pages serve a later weight
            bar.update(spec_nbytes(*file.specs[key]))

        peaks = overlapped(keys, lambda key: merger.load(file, key, ahead),
                           lambda key, loaded: merger.finish(file, key, loaded), store, size=size)
        writer.close()
    if stats is not None:
        for name, value in peaks.items():
            stats[name] = max(stats.get(name, 0), value)
    return len(keys)


def merge_checkpoint(checkpoint: str | Path, loras: Sequence[LoraSpec | tuple[Any, ...] | str | Path],
                     output: str | Path, *, dtype: str | None = None, layout: str | None = None,
                     configs: Mapping[str, Any] | None = None, family: str | None = None,
                     force: bool = False, progress: bool = False, device: str | torch.device | None = None,
                     variant: str | None = None) -> MergeReport:
    """Write `checkpoint` with `loras` merged in: in its own layout, or in the other one (a single
    file as a diffusers folder with the shipped configs of its family or `configs`; a diffusers
    folder's unet/text encoders/vae as one original-layout file).
    `family` overrides the detected one ("" skips the check). Planned weights are computed on
    `device` ("cpu" by default, "cuda", "auto"): bit-identical to the patcher on a model on that
    device. Memory: in the same layout, the read-ahead and write-behind budgets (128 MiB each) plus
    two float32 buffers of the largest planned weight and the LoRAs; a layout change holds one component."""
    specs = [_as_spec(item) for item in loras]
    if not specs:
        raise ToolError("no LoRAs to merge")
    if layout not in (None, "single-file", "diffusers"):
        raise ToolError(f"unknown layout {layout!r}; choose single-file or diffusers")
    out = check_output(output, [checkpoint, *(s.path for s in specs)], force, folder=None)
    out_dtype = parse_dtype(dtype)
    compute_on = resolve_device(device)
    ckpt = open_checkpoint(checkpoint, variant)
    target = layout or ckpt.layout
    check_replace(out, folder=target == "diffusers")
    plan, found, diagnostics = plan_merge(ckpt, specs, family)
    recipe = recipe_metadata(
        "merge", checkpoint=describe_inputs([ckpt.root])[0] if ckpt.layout == "single-file" else ckpt.root.name,
        loras=[{**d, "te": s.te, "unet": s.unet} for d, s in zip(describe_inputs([s.path for s in specs]), specs)],
        dtype=dtype, layout=target, **({"variant": variant} if variant else {}))
    report = MergeReport(out, target, found or None, diagnostics=diagnostics, device=str(compute_on))
    bar = Progress(ckpt.nbytes, "merge", progress)
    with TensorReader(ckpt) as reader:
        merger = _Merger(reader, plan, out_dtype, compute_on)
        if target == "single-file" and ckpt.layout == "single-file":
            file = ckpt.files[0]
            with atomic_path(out) as tmp:
                report.tensors_written = _write_file(merger, file, tmp, {**file.metadata, **recipe}, bar,
                                                     stats=report.buffers)
        elif target == "single-file":
            from loraprompt.tools.to_single import write_single

            if not found:
                raise ToolError(f"{ckpt.root}: model family unknown; cannot pick the single-file names")
            with atomic_path(out) as tmp:
                report.tensors_written = write_single(ckpt, merger.tensor, found, tmp, out_dtype=merger.out_dtype,
                                                      metadata=recipe, bar=bar)
        elif ckpt.layout == "diffusers":
            with _staged(out, force) as staging:
                report.tensors_written = _copy_folder(merger, ckpt, staging, recipe, bar, stats=report.buffers)
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


def _copy_folder(merger: _Merger, ckpt: Checkpoint, staging: Path, recipe: dict[str, str], bar: Progress, *,
                 stats: dict[str, int]) -> int:
    """A diffusers folder: weight files merged, everything else but variant weights copied."""
    weights = {f.path for f in ckpt.files} | set(ckpt.unused)  # a variant would keep the unmerged weights
    shutil.copytree(ckpt.root, staging, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if Path(d, n) in weights])
    written = 0
    for file in ckpt.files:
        target = staging / file.path.relative_to(ckpt.root)
        written += _write_file(merger, file, target, {**file.metadata, **recipe}, bar, stats=stats)
    return written
