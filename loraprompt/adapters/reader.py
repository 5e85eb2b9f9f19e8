"""`read_adapter(path)`: any supported file (or a library entry's) -> one format-neutral `Adapter`."""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from loraprompt.adapters.algorithms import ALGORITHMS, BOFTModule
from loraprompt.adapters.family import detect_file_family
from loraprompt.adapters.finite import all_finite
from loraprompt.adapters.keys import KeyParts, dotted_module, split_key
from loraprompt.adapters.loading import load_tensors
from loraprompt.adapters.types import MODES, Adapter, AdapterModule
from loraprompt.errors import AdapterFileError
from loraprompt.library.entry import Entry

COMMON_PARTS = frozenset({"alpha", "scale", "dora_scale", "magnitude"})  # magnitude: PEFT's DoRA vector
PEFT_METADATA_KEY = "lora_adapter_metadata"
PEFT_CONFIG_FILE = "adapter_config.json"  # PEFT's save_pretrained writes it beside adapter_model.safetensors
PEFT_TYPES = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}  # PEFT config type -> the algorithm it trains
NUMBER_PARTS = frozenset({"alpha", "scale", "on_input"})  # read as numbers or flags: any dtype
RANKED = frozenset({"lora", "loha", "lokr", "glora", "tlora"})  # alpha divides by a rank; OFT's alpha is a constraint


def _algorithm(path: str, parts: dict[str, tuple[str, Tensor]]) -> type[AdapterModule]:
    names = set(parts) - COMMON_PARTS
    if "blocks" in names and parts["blocks"][1].dim() == 4:
        return BOFTModule
    for cls in ALGORITHMS:
        if cls.accepts(names):
            return cls
    keys = sorted(k for k, _ in parts.values())
    raise AdapterFileError(path, f"no algorithm accepts the tensor set {sorted(names)}", key=keys[0])


def _scalar(path: str, key: str, t: Tensor, what: str) -> float:
    if t.dtype == torch.bool:  # True would read as 1.0; A1111 and kohya take any number, negative ones too
        raise AdapterFileError(path, f"{what} is a bool tensor, not a number", key=key)
    if t.numel() != 1:
        raise AdapterFileError(path, f"{what} must be a scalar, got shape {tuple(t.shape)}", key=key)
    return float(t.float().item())


def _check_finite(path: str, tensors: dict[str, Tensor]) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() and not all_finite(t):
            raise AdapterFileError(path, "tensor contains NaN or Inf", key=key)


def peft_configs(path: str | Path, metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """component -> {"lora_alpha", "alpha_pattern", "use_rslora", ...} from diffusers' header."""
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdapterFileError(path, f"{PEFT_METADATA_KEY} is not JSON: {exc.msg}", key="__metadata__") from exc
    out: dict[str, dict[str, Any]] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            component, _, field = str(key).partition(".")
            out.setdefault(component, {})[field] = value
    return out


def peft_folder_config(path: str) -> dict[str, Any]:
    """The LoraConfig that PEFT's `save_pretrained` writes beside its weights (`adapter_config.json`),
    whose keys (`base_model.model.…`) name no component; {} when there is none or it is not LoRA's."""
    config = Path(path).with_name(PEFT_CONFIG_FILE)
    if not config.is_file():
        return {}
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(path, f"{config} beside it is not readable JSON: {exc}", key=PEFT_CONFIG_FILE) from exc
    if not isinstance(doc, dict) or doc.get("peft_type", "LORA") not in PEFT_TYPES:
        return {}
    return doc


def peft_pattern_value(patterns: Mapping[str, Any] | None, dotted: str, default: Any) -> Any:
    """PEFT's get_pattern_key: the first pattern p with the regex (.*\\.)?(p)$ on the dotted name wins."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", dotted):
            return value
    return default


def config_number(path: str | Path, value: Any, what: str, key: str) -> float:
    """A number (alpha, r) read from a config or the header metadata: a bool (which float() would
    make 1.0) or anything that is not a number is refused, naming `what` and where (`key`)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise AdapterFileError(path, f"{what} is {json.dumps(value, default=str)}, not a number", key=key) from None


def peft_alpha(path: str | Path, config: Mapping[str, Any], dotted: str, rank: int, key: str) -> float | None:
    """A module's alpha under PEFT's rules: alpha_pattern (suffix regex) beats lora_alpha; with
    use_rslora the scale is alpha/sqrt(rank), kept here as alpha·sqrt(rank) over the rank."""
    alpha = peft_pattern_value(config.get("alpha_pattern"), dotted, config.get("lora_alpha"))
    if alpha is None:
        return None
    value = config_number(path, alpha, f"lora_alpha for {dotted}", key)
    return value * math.sqrt(rank) if config.get("use_rslora") else value


def _check_lora(path: str, mod: AdapterModule, parts: dict[str, tuple[str, Tensor]]) -> None:
    """Refuses factors that do not chain, naming the tensor (`up` or `mid`) whose rank is off."""
    up, down = mod.tensors["up"], mod.tensors["down"]
    inner = mod.tensors["mid"].shape[:2] if "mid" in mod.tensors else None
    if inner is None and up.shape[1] != down.shape[0]:
        raise AdapterFileError(path, f"up {tuple(up.shape)} and down {tuple(down.shape)} ranks differ", key=parts["up"][0])
    if inner is not None and (inner[0] != up.shape[1] or inner[1] != down.shape[0]):
        raise AdapterFileError(path, f"mid {tuple(mod.tensors['mid'].shape)} does not join up and down", key=parts["mid"][0])


def _build(
    path: str, where: tuple[str, str], parts: dict[str, tuple[str, Tensor]], *, mode: str, scheme: str, peft: dict[str, dict[str, Any]]
) -> AdapterModule:
    comp, mpath = where
    for name, (key, t) in parts.items():
        if name not in NUMBER_PARTS and not t.is_floating_point():
            raise AdapterFileError(path, f"{name} is a {str(t.dtype).removeprefix('torch.')} tensor, not a floating-point one", key=key)
    cls = _algorithm(path, parts)
    tensors = {name: t for name, (_, t) in parts.items() if name not in COMMON_PARTS or name == "scale"}
    alpha = _scalar(path, parts["alpha"][0], parts["alpha"][1], "alpha") if "alpha" in parts else None
    if "scale" in parts:
        _scalar(path, parts["scale"][0], parts["scale"][1], "scale")
    extra: dict[str, Any] = {"scheme": scheme}
    if "dora_scale" in parts and "magnitude" in parts:
        raise AdapterFileError(path, "both dora_scale and lora_magnitude_vector", key=parts["magnitude"][0])
    dora = parts["dora_scale"][1] if "dora_scale" in parts else None
    if "magnitude" in parts:
        dora = parts["magnitude"][1]
        extra["dora"] = "peft"
    if alpha == 0 and cls.name in RANKED:
        raise AdapterFileError(path, "alpha is zero", key=parts["alpha"][0])
    mod = cls(comp, mpath, cls.name, tensors, alpha=alpha, dora_scale=dora,
              source_keys=tuple(sorted(k for k, _ in parts.values())), extra=extra, mode=mode)
    if (why := mod.inconsistency()) is not None:
        raise AdapterFileError(path, why, key=mod.source_keys[0])
    if cls.name == "lora":
        _check_lora(path, mod, parts)
        dotted = dotted_module(parts["down"][0])
        config = peft.get(comp) or (peft.get("*") if scheme == "peft" else None)
        if alpha is None and config and dotted is not None:
            source = PEFT_CONFIG_FILE if config is peft.get("*") else f"__metadata__.{PEFT_METADATA_KEY}"
            mod.alpha = peft_alpha(path, config, dotted, mod.rank or 1, source)
    elif cls.name in ("loha", "lokr") and scheme == "peft" and alpha is None and "scale" not in parts:
        mod.tensors = {**tensors, **_peft_lycoris_scale(path, peft.get("*") or {}, cls.name, next(iter(parts.values()))[0])}
    return mod


def _peft_lycoris_scale(path: str, config: Mapping[str, Any], algorithm: str, key: str) -> dict[str, Tensor]:
    """PEFT's LoHa/LoKr scale, alpha/r with both from its config (rank_pattern, alpha_pattern), as a
    `scale` part: LoKr's r is the config's even where both Kronecker factors are full (LyCORIS: 1)."""
    import torch

    dotted = dotted_module(key)
    if PEFT_TYPES.get(config.get("peft_type", "")) != algorithm or dotted is None:
        return {}  # no config beside it: LyCORIS' rules (alpha = rank)
    rank = peft_pattern_value(config.get("rank_pattern"), dotted, config.get("r"))
    alpha = peft_pattern_value(config.get("alpha_pattern"), dotted, config.get("alpha"))
    usable = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (rank, alpha))
    if not usable or rank <= 0:
        raise AdapterFileError(path, f"{PEFT_CONFIG_FILE} has no usable r and alpha for this {algorithm} module "
                                     f"(r {json.dumps(rank)}, alpha {json.dumps(alpha)})", key=key)
    return {"scale": torch.tensor(float(alpha) / float(rank), dtype=torch.float64)}


def _format(schemes: Counter[str], algorithms: set[str], metadata: dict[str, str]) -> str:
    scheme = schemes.most_common(1)[0][0] if schemes else "unknown"
    if scheme == "kohya" and (algorithms - {"lora"} or "lycoris" in metadata.get("ss_network_module", "")):
        return "lycoris"
    return scheme


def bundled_embeddings(path: str, tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """A1111 v1.10's bundled embeddings: `bundle_emb.<name>.string_to_param.<k>` or `.clip_l`/`.clip_g`."""
    out: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith("bundle_emb."):
            continue
        name, _, part = key[len("bundle_emb."):].partition(".")
        part = "string_to_param" if part.startswith("string_to_param") else part
        if not name or part not in ("string_to_param", "clip_l", "clip_g"):
            continue  # A1111 ignores what it cannot use; so do we (the key stays in `unclaimed`)
        if tensor.dim() == 1:
            tensor = tensor[None]
        if tensor.dim() != 2 or not tensor.is_floating_point():
            raise AdapterFileError(path, f"bundled embedding must be a (vectors, width) float tensor, got {tuple(tensor.shape)}", key=key)
        out.setdefault(name, {})[part] = tensor
    return out


def _is_embedding_key(key: str, embeddings: Mapping[str, Any]) -> bool:
    name, _, part = key.removeprefix("bundle_emb.").partition(".")
    return key.startswith("bundle_emb.") and name in embeddings and (part.partition(".")[0] in embeddings[name])


def read_adapter(path: str | os.PathLike[str] | Entry, mode: str = "reference") -> Adapter:
    """Read any supported LoRA/LyCORIS file; AdapterFileError (naming file and key) on bad input.
    `path` is a path or a `loraprompt.library` `Entry` (from `Library.entries` or `resolve`), whose
    file (`entry.path`) is read; anything else raises TypeError.

    `mode` "reference" computes each delta as the tool that wrote the file merges it (LyCORIS,
    PEFT/diffusers, kohya); "a1111" as Automatic1111 v1.10.1 does where it differs (DoRA, GLoRA,
    IA3, full-factor LoKr, BOFT: `loraprompt.adapters.types`). The Adapter tells its `format`,
    `family` (None when nothing tells; `family_source` says whether the key names and shapes or the
    metadata told it, `family_conflict` when they disagree), its `modules` (each with `algorithm`,
    `rank` and `alpha` where the algorithm has them), `metadata` and bundled `embeddings`."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if isinstance(path, Entry):
        path = path.path
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_adapter takes a path or a library Entry, not {type(path).__name__}")
    spath = os.fspath(path)
    tensors, metadata = load_tensors(spath)
    if not tensors:
        raise AdapterFileError(spath, "holds no tensors")
    _check_finite(spath, tensors)
    groups: dict[tuple[str, str], dict[str, tuple[str, Tensor]]] = {}
    schemes: Counter[str] = Counter()
    group_scheme: dict[tuple[str, str], str] = {}
    unclaimed: list[str] = []
    embeddings = bundled_embeddings(spath, tensors)
    for key in sorted(tensors):
        kp: KeyParts | None = None if key.startswith("bundle_emb.") else split_key(key)
        if kp is None:
            unclaimed.append(key)
            continue
        group = groups.setdefault((kp.component, kp.path), {})
        if kp.part in group:
            raise AdapterFileError(spath, f"two tensors for the same part ({group[kp.part][0]})", key=key)
        group[kp.part] = (key, tensors[key])
        schemes[kp.scheme] += 1
        group_scheme[(kp.component, kp.path)] = kp.scheme
    peft = peft_configs(spath, metadata)
    if "peft" in schemes:  # keys without a component: maybe a save_pretrained folder's weights
        peft["*"] = peft_folder_config(spath)
    modules: dict[str, AdapterModule] = {}
    for (comp, mpath), parts in groups.items():
        if set(parts) <= COMMON_PARTS:  # an alpha (or dora_scale) without weights
            unclaimed.extend(k for k, _ in parts.values())
            continue
        mod = _build(spath, (comp, mpath), parts, mode=mode, scheme=group_scheme[(comp, mpath)], peft=peft)
        modules[mod.lora_key] = mod
    if not modules:
        raise AdapterFileError(spath, f"no LoRA/LyCORIS module found among {len(tensors)} tensors (first: {sorted(tensors)[0]})")
    stat = Path(spath).stat()
    adapter = Adapter(
        path=spath,
        name=Path(spath).stem,
        format=_format(schemes, {m.algorithm for m in modules.values()}, metadata),
        modules=modules,
        metadata=metadata,
        unclaimed=tuple(k for k in unclaimed if not _is_embedding_key(k, embeddings)),
        embeddings=embeddings,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
    )
    detection = detect_file_family({key: tuple(t.shape) for key, t in tensors.items()}, metadata)
    adapter.family, adapter.family_source, adapter.family_conflict = detection.family, detection.source, detection.conflict
    if detection.denoiser == "transformer":
        _to_transformer(adapter)
    return adapter


def _to_transformer(adapter: Adapter) -> None:
    """Move the modules read under "unet" (`lora_unet_…`, `diffusion_model.…`) to "transformer":
    the file is for a diffusion transformer (SD3, Flux, Wan), whose component diffusers calls so."""
    moved: dict[str, AdapterModule] = {}
    for mod in adapter.modules.values():
        if mod.component == "unet":
            mod.component = "transformer"
        if mod.lora_key in moved:
            raise AdapterFileError(adapter.path, f"two modules for {mod.lora_key}", key=mod.source_keys[0])
        moved[mod.lora_key] = mod
    adapter.modules = moved

