"""Load a local checkpoint fully offline: an SD1.x/SD2.x/SDXL single-file `.safetensors` (LDM/SGM
layout, as Automatic1111 uses them), or a diffusers folder of SD1.x/SD2.x/SDXL, SD3/SD3.5 or
Flux.1. The family is read from the file's keys and shapes; the SD diffusers configs and the CLIP
tokenizer files ship with loraprompt, so nothing is looked up on a hub. SD3 and Flux single files
are refused with the reason: diffusers needs their configs and the T5 tokenizer, which do not ship."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from loraprompt.errors import LoraPromptError
from loraprompt.models import LoadedModel

FAMILIES = ("sd1", "sd2", "sdxl")
DIT_PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}  # txt2img pipelines the web UI runs
UNET = "model.diffusion_model."
_CONTEXT_KEY = re.compile(r"^model\.diffusion_model\..*attn2\.to_k\.weight$")
# single-file diffusion transformers (BFL/ComfyUI and SAI layouts, with or without the LDM prefix)
_DIT_SINGLE = (("flux", re.compile(r"^(?:model\.diffusion_model\.)?double_blocks\.\d+\.img_attn\.")),
               ("sd3", re.compile(r"^(?:model\.diffusion_model\.)?joint_blocks\.\d+\.x_block\.")))
_DIT_LABELS = {"sd3": "SD3", "flux": "Flux.1"}


class CheckpointError(LoraPromptError):
    """A checkpoint that cannot be loaded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def detect_family(shapes: Mapping[str, tuple[int, ...]], path: str | Path = "<checkpoint>") -> str:
    """sd1/sd2/sdxl from LDM/SGM tensor names and shapes; CheckpointError for what txt2img can't run."""
    dit = single_file_dit(shapes)
    if dit is not None:
        raise CheckpointError(path, dit_single_file_reason(dit))
    if not any(k.startswith(UNET) for k in shapes):
        raise CheckpointError(path, "no UNet tensors (model.diffusion_model.*): not a Stable Diffusion checkpoint"
                                    " (a LoRA belongs in the LoRA folder)")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(conv_in[1], f"a {conv_in[1]}-channel")
        raise CheckpointError(path, f"{kind} UNet (input_blocks.0.0.weight has {conv_in[1]} input channels);"
                                    " txt2img needs a 4-channel model")
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.") for k in shapes):
        raise CheckpointError(path, "an SDXL refiner (one OpenCLIP text encoder); load the SDXL base model")
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        return "sd1"
    context = next((s[1] for k, s in shapes.items() if _CONTEXT_KEY.match(k) and len(s) == 2), None)
    by_context = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(context or 0)
    if by_context is None:
        raise CheckpointError(path, f"no text encoder tensors and an unknown cross-attention width ({context});"
                                    " cannot tell SD1/SD2/SDXL apart")
    raise CheckpointError(path, f"has no text encoder tensors (UNet looks {by_context}); load a full checkpoint")


def single_file_dit(shapes: Mapping[str, object]) -> str | None:
    """"sd3" or "flux" when a single file holds that diffusion transformer, else None."""
    for family, pattern in _DIT_SINGLE:
        if any(pattern.match(k) for k in shapes):
            return family
    return None


def dit_single_file_reason(family: str) -> str:
    """Why an SD3/Flux single file cannot load offline, and what to load instead."""
    label = _DIT_LABELS.get(family, family)
    return (f"a single-file {label} checkpoint: diffusers needs the model's configs and its T5 tokenizer to load one,"
            f" and loraprompt ships neither (they are not on this machine offline); load the model as a diffusers"
            f" folder instead (its repository layout with model_index.json, or `{_PIPELINE_OF[family]}"
            f".from_single_file(...).save_pretrained(DIR)` where the configs are at hand), then --checkpoint DIR")


_PIPELINE_OF = {family: cls for cls, family in DIT_PIPELINES.items()}


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a `.safetensors` header (no tensor data is read)."""
    from loraprompt.library.safetensors_header import read_header

    return {name: info.shape for name, info in read_header(path).tensors.items()}


def _package_bytes(name: str) -> bytes:
    return resources.files("loraprompt.models").joinpath(name).read_bytes()


def family_config(family: str) -> dict[str, Any]:
    """The shipped diffusers configs of `family`: component folder -> config dict."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return dict(json.loads(_package_bytes(f"config_{family}.json")))


def write_config_dir(configs: Mapping[str, Any], root: str | Path) -> Path:
    """Lay `configs` out as a diffusers repository (with the shipped CLIP vocabulary) under `root`."""
    # The folder is named by a digest of its content, so it is written once and never goes stale.
    vocab = gzip.decompress(_package_bytes("clip_vocab.json.gz"))
    merges = gzip.decompress(_package_bytes("clip_merges.txt.gz"))
    text = json.dumps(configs, sort_keys=True)
    folder = Path(root) / hashlib.sha256(text.encode() + vocab + merges).hexdigest()[:16]
    if (folder / "model_index.json").is_file():
        return folder
    for component, config in configs.items():
        if component == "model_index":
            continue
        sub = folder / component
        sub.mkdir(parents=True, exist_ok=True)
        if component.startswith("tokenizer"):
            (sub / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
            (sub / "vocab.json").write_bytes(vocab)
            (sub / "merges.txt").write_bytes(merges)
        else:
            name = "scheduler_config.json" if component == "scheduler" else "config.json"
            (sub / name).write_text(json.dumps(config, indent=1), encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps(configs["model_index"], indent=1), encoding="utf-8")
    return folder


def default_config_root() -> Path:
    """Where materialised config folders live: ~/.cache/loraprompt/configs."""
    return Path.home() / ".cache" / "loraprompt" / "configs"


def _device_dtype(family: str | None = None) -> tuple[str, Any]:
    """float16 on a GPU for SD (bfloat16 for SD3/Flux, which overflow in float16), float32 on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", torch.float32
    return "cuda", torch.bfloat16 if family in _DIT_LABELS else torch.float16


def _finish(pipe: Any, family: str, name: str, model_hash: str | None) -> LoadedModel:
    device, _ = _device_dtype(family)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe=pipe, family=family, name=name, model_hash=model_hash)


def _pipeline_class(path: Path) -> str:
    """The `_class_name` of a diffusers folder's model_index.json (empty when unreadable)."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(index.get("_class_name", "")) if isinstance(index, dict) else ""


def load_diffusers_folder(path: Path) -> LoadedModel:
    """A diffusers pipeline folder (model_index.json and component folders), local files only:
    SD1.x/SD2.x/SDXL (a UNet), SD3/SD3.5 or Flux.1 (a transformer)."""
    from diffusers import DiffusionPipeline

    dit = DIT_PIPELINES.get(_pipeline_class(path))
    _, dtype = _device_dtype(dit)
    extra: dict[str, Any] = {} if dit else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        raise CheckpointError(path, f"cannot load as a diffusers folder: {exc}") from exc
    if dit is not None:
        family = dit
    elif getattr(pipe, "unet", None) is None:
        runs = ", ".join(["StableDiffusionPipeline", "StableDiffusionXLPipeline", *DIT_PIPELINES])
        raise CheckpointError(path, f"a {type(pipe).__name__}: the web UI runs {runs} folders")
    elif getattr(pipe, "text_encoder_2", None) is not None:
        family = "sdxl"
    else:
        family = "sd2" if pipe.unet.config.cross_attention_dim == 1024 else "sd1"
    return _finish(pipe, family, path.name, None)


def load_single_file(path: Path, *, configs: Mapping[str, Any] | None = None,
                     config_root: str | Path | None = None, prediction_type: str | None = None) -> LoadedModel:
    """A single-file `.safetensors` checkpoint through diffusers with the shipped (or given) configs."""
    # SD2 defaults to v-prediction (the 768-v models); prediction_type="epsilon" suits SD2 512-base.
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from loraprompt.library.hashes import file_hashes

    family = detect_family(header_shapes(path), path)
    configs = dict(configs if configs is not None else family_config(family))
    if prediction_type is not None:
        configs["scheduler"] = {**configs["scheduler"], "prediction_type": prediction_type}
    folder = write_config_dir(configs, config_root or default_config_root())
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    _, dtype = _device_dtype()
    try:
        pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(path, f"diffusers could not convert this {family} checkpoint: {exc}") from exc
    return _finish(pipe, family, path.stem, file_hashes(path).get("autov2"))


def load_checkpoint(path: str | Path, prediction_type: str | None = None) -> LoadedModel:
    """A diffusers folder or a single-file `.safetensors` checkpoint, loaded offline."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise CheckpointError(p, "a folder without model_index.json is not a diffusers pipeline")
        return load_diffusers_folder(p)
    if not p.is_file():
        raise CheckpointError(p, "no such file or folder")
    if p.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise CheckpointError(p, "pickle checkpoints can run code when loaded; use a .safetensors file")
    if p.suffix.lower() != ".safetensors":
        raise CheckpointError(p, "expected a .safetensors file or a diffusers folder")
    return load_single_file(p, prediction_type=prediction_type)


def scan_checkpoints(folder: str | Path, skipped: list[tuple[Path, str]] | None = None) -> dict[str, Path]:
    """The checkpoints in `folder` (recursively), by the name the UI lists: single-file
    `.safetensors` by their path relative to `folder` without the suffix (as A1111 titles them),
    diffusers folders (with model_index.json) by their relative path. LoRAs are told apart by
    their header (no UNet tensors) and left out; so are files whose header cannot be read. SD3 and
    Flux single files cannot load offline: they are left out and added to `skipped` with the reason."""
    from loraprompt.errors import LoraPromptError

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CheckpointError(root, "the checkpoint folder does not exist")
    found: dict[str, Path] = {}
    for index in sorted(root.rglob("model_index.json")):
        found[index.parent.relative_to(root).as_posix() or index.parent.name] = index.parent
    folders = tuple(found.values())
    for path in sorted(root.rglob("*.safetensors")):
        if any(f in path.parents for f in folders):
            continue  # a diffusers folder's component weights
        try:
            shapes = header_shapes(path)
        except (LoraPromptError, OSError, ValueError):
            continue
        dit = single_file_dit(shapes)
        if dit is not None:
            if skipped is not None:
                skipped.append((path, dit_single_file_reason(dit)))
        elif any(k.startswith(UNET) for k in shapes):
            found[path.relative_to(root).with_suffix("").as_posix()] = path
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))
