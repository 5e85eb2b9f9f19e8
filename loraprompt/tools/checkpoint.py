"""Checkpoints as streams of tensors: single-file original layout or a diffusers folder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loraprompt.errors import ToolError
from loraprompt.tools.io import FileLayout, read_layout, read_tensor, spec_nbytes

# single-file key prefix -> diffusers component (A1111/SGM/LDM names)
SINGLE_FILE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "unet"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
)
_BARE_DIT = ("double_blocks.", "single_blocks.", "joint_blocks.")  # a transformer file without prefix
DIFFUSERS_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
DENOISERS = ("unet", "transformer")  # SD1/SD2/SDXL; SD3, Flux.1, Wan 2.x

Spec = tuple[torch.dtype, tuple[int, ...]]


@dataclass
class TensorFile:
    """One safetensors file of a checkpoint: its layout and which component each tensor belongs to."""

    layout: FileLayout
    component_of: dict[str, str] = field(default_factory=dict)  # key -> component (others: copied)

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def specs(self) -> dict[str, Spec]:
        return self.layout.specs

    @property
    def metadata(self) -> dict[str, str]:
        return self.layout.metadata


@dataclass
class Checkpoint:
    """A checkpoint's layout ("single-file" or "diffusers"), root and tensor files."""

    layout: str
    root: Path
    files: list[TensorFile]
    unused: list[Path] = field(default_factory=list)  # a folder's variant weights (*.fp16.safetensors, …)

    def component_specs(self, component: str) -> dict[str, Spec]:
        """Every tensor key -> spec of one component, across the files that hold it."""
        return {k: f.specs[k] for f in self.files for k, c in f.component_of.items() if c == component}

    def components(self) -> set[str]:
        return {c for f in self.files for c in f.component_of.values()}

    @property
    def nbytes(self) -> int:
        return sum(spec_nbytes(d, s) for f in self.files for d, s in f.specs.values())

    def locate(self, key: str, component: str) -> TensorFile:
        """The file holding `key` of `component`."""
        for f in self.files:
            if f.component_of.get(key) == component:
                return f
        raise ToolError(f"{self.root}: tensor {key!r} not found")



def open_checkpoint(path: str | Path, variant: str | None = None) -> Checkpoint:
    """Read the layout of a single-file `.safetensors` checkpoint or a diffusers folder (headers only);
    `variant` ("fp16", "non_ema", …): read a folder's `<stem>.<variant>.safetensors` weights instead."""
    root = Path(path)
    if root.is_dir():
        return _diffusers(root, variant)
    if variant is not None:
        raise ToolError(f"{root}: --variant applies to diffusers folders, not to a single file")
    if root.suffix != ".safetensors":
        raise ToolError(f"{root}: only .safetensors checkpoints and diffusers folders are supported "
                        "(pickled .ckpt files are refused: they can run code)")
    if not root.exists():
        raise ToolError(f"{root}: no such checkpoint")
    tf = TensorFile(read_layout(root))
    for key in tf.specs:
        component = next((c for p, c in SINGLE_FILE_PREFIXES if key.startswith(p)), None)
        if component is not None:
            tf.component_of[key] = component
    if "unet" not in tf.component_of.values() and any(k.startswith(_BARE_DIT) for k in tf.specs):
        tf.component_of = dict.fromkeys(tf.specs, "unet")  # a bare BFL/SAI transformer (flux1-dev.safetensors)
    if "unet" not in tf.component_of.values():
        raise ToolError(f"{root}: no model.diffusion_model.* tensors; not an SD1.x/SD2.x/SDXL checkpoint "
                        "(nor a Flux.1/SD3 transformer under its native names)")
    return Checkpoint("single-file", root, [tf])


def _diffusers(root: Path, variant: str | None) -> Checkpoint:
    if not (root / "model_index.json").exists() and not any((root / d).is_dir() for d in DENOISERS):
        raise ToolError(f"{root}: a folder but not a diffusers model (no model_index.json, unet/ or transformer/)")
    files, unused = [], []
    for component in DIFFUSERS_COMPONENTS:
        folder = root / component
        if not folder.is_dir():
            continue
        chosen = _weight_files(folder, variant)
        unused += [p for p in sorted(folder.iterdir()) if p not in chosen and _is_weight_file(p.name)]
        for file in chosen:
            layout = read_layout(file)
            files.append(TensorFile(layout, dict.fromkeys(layout.specs, component)))
    if not any(f.path.parent.name in DENOISERS for f in files):
        raise ToolError(f"{root}: no unet/ or transformer/ weights")
    return Checkpoint("diffusers", root, files, unused)


_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers models; transformers models


def _is_weight_file(name: str) -> bool:
    """A weight file or a variant's shard index (`<stem>.safetensors.index.fp16.json`)."""
    return name.endswith(".safetensors") or (".safetensors.index." in name and not name.endswith(".index.json"))


def _weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The files diffusers loads for a component: `<stem>.safetensors` or the shards its
    `<stem>.safetensors.index.json` lists (with a variant: `<stem>.<variant>.safetensors`,
    `<stem>.safetensors.index.<variant>.json`). Other variants are other copies of the weights, not shards."""
    tag = f".{variant}" if variant else ""
    for stem in _WEIGHT_STEMS:
        single, index = folder / f"{stem}{tag}.safetensors", folder / f"{stem}.safetensors.index{tag}.json"
        if single.is_file():
            return [single]
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted({folder / str(name) for name in weight_map.values()})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ToolError(f"{index}: not a safetensors shard index ({exc})") from exc
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise ToolError(f"{index}: lists shards that are not there: {', '.join(missing)}")
            return shards
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if not found:
        raise ToolError(f"{folder}: no .safetensors weights (pickled .bin weights are not supported)")
    wanted = f"a {variant} variant" if variant else "diffusion_pytorch_model.safetensors or model.safetensors"
    raise ToolError(f"{folder}: no {wanted} (nor its .safetensors.index{tag}.json), only {', '.join(found)}: "
                    "variant files (fp16, non_ema, …) are read only when asked for (--variant fp16)")


class TensorReader:
    """Open file handles for a checkpoint; `get(file, key)` reads one tensor (bounded memory)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}
        self.checkpoint = checkpoint

    def __enter__(self) -> TensorReader:
        try:
            for f in self.checkpoint.files:
                self._handles[f.path] = self._stack.enter_context(open(f.path, "rb"))
        except BaseException:
            self._stack.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def get(self, file: TensorFile, key: str) -> torch.Tensor:
        return read_tensor(self._handles[file.path], file.layout, key)

    def keys(self) -> Iterator[tuple[TensorFile, str]]:
        for f in self.checkpoint.files:
            for key in f.specs:
                yield f, key
