"""Loading a file's tensors safely: validated safetensors, or weights-only pickles on torch ≥ 2.6."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from loraprompt.errors import AdapterFileError
from loraprompt.library.safetensors_header import SafetensorsHeader, read_header

PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")
MIN_TORCH_FOR_PICKLES = (2, 6)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def load_safetensors(path: str) -> tuple[dict[str, Tensor], SafetensorsHeader]:
    """Validate the header ourselves, then let safetensors read the data."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise AdapterFileError(path, f"safetensors could not read the data: {exc}") from exc
    if set(tensors) != set(header.tensors):
        raise AdapterFileError(path, "file changed while it was being read")
    return tensors, header


def _flatten(path: str, obj: object) -> dict[str, Tensor]:
    """A state dict (or one wrapped under 'state_dict') of tensors, with scalar alphas as tensors."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AdapterFileError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, Tensor):
            out[str(key)] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(key)] = torch.tensor(float(value))
        else:
            raise AdapterFileError(path, f"value is a {type(value).__name__}, not a tensor", key=str(key))
    return out


def pickle_refusal() -> str | None:
    """Why no pickle is read on this torch (weights_only had bypasses before 2.6, CVE-2025-32434:
    a crafted file would run code), or None."""
    if _torch_version() < MIN_TORCH_FOR_PICKLES:
        return f"refusing pickled weights on torch {torch.__version__} (< 2.6 has weights_only bypasses)"
    return None


def load_pickle(path: str) -> dict[str, Tensor]:
    """torch.load(weights_only=True) only; refuse anything that would need a full unpickle."""
    if (refusal := pickle_refusal()) is not None:
        raise AdapterFileError(path, f"{refusal}; use .safetensors")
    # An explicit weights_only=True is never overridden by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (torch ≥ 2.6).
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise AdapterFileError(path, f"refused: the pickle needs more than plain tensors ({first})") from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise AdapterFileError(path, f"not a readable torch file: {exc}") from exc
    return _flatten(path, obj)


def load_tensors(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, header metadata) of an adapter file; AdapterFileError on anything unsafe or broken."""
    p = Path(path)
    if p.is_dir():
        raise AdapterFileError(path, "is a directory, not an adapter file")
    if not p.exists():
        raise AdapterFileError(path, "no such file")
    if p.suffix.lower() in PICKLE_SUFFIXES:
        if p.stat().st_size == 0:
            raise AdapterFileError(path, "file is empty")
        return load_pickle(path), {}
    tensors, header = load_safetensors(path)
    return tensors, header.metadata
