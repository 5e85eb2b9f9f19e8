"""Demo LoRAs for the built-in demo model, written on first run as kohya-format safetensors (the
layout most files on the hubs use) with kohya `ss_*` metadata, a preview image and an A1111
user-metadata sidecar each. Written with `safetensors` alone: no peft needed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RANK = 4


@dataclass(frozen=True)
class DemoLora:
    """One demo LoRA: where it goes under models/Lora, what it touches, and its card text."""

    relpath: str
    seed: int
    unet_scale: float
    te_scale: float
    color: tuple[int, int, int]
    description: str
    activation_text: str
    preferred_weight: float
    trigger_words: tuple[str, ...]


DEMO_LORAS: tuple[DemoLora, ...] = (
    DemoLora("demo_warm.safetensors", 11, 0.6, 0.0, (226, 120, 60), "Demo LoRA: UNet only.", "warm tones", 0.8, ("warm", "orange")),
    DemoLora("demo_sketch.safetensors", 12, 0.5, 0.5, (90, 90, 96), "Demo LoRA: UNet and text encoder.", "sketch style", 1.0, ("sketch", "pencil")),
    DemoLora("styles/demo_neon.safetensors", 13, 0.8, 0.3, (60, 200, 230), "Demo LoRA in a subfolder.", "neon glow", 0.6, ("neon",)),
)


def kohya_targets(pipe: Any) -> dict[str, Any]:
    """kohya LoRA name -> module for what sd-scripts trains on SD1: UNet attention, TE attention/MLP."""
    targets: dict[str, Any] = {}
    for name, module in pipe.unet.named_modules():
        if ".attentions." in name and name.rsplit(".", 1)[-1] in {"to_q", "to_k", "to_v", "0", "proj", "2", "proj_in", "proj_out"}:
            if hasattr(module, "weight") and module.weight.dim() in (2, 4):
                targets["lora_unet_" + name.replace(".", "_")] = module
    for name, module in pipe.text_encoder.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
            # transformers 5 dropped the `text_model.` level; kohya names always carry it.
            full = name if name.startswith("text_model.") else "text_model." + name
            targets["lora_te_" + full.replace(".", "_")] = module
    return targets


def lora_state_dict(pipe: Any, spec: DemoLora) -> dict[str, Any]:
    """Random kohya LoRA tensors (down, up, alpha) for `spec`, reproducible from its seed."""
    import torch

    generator = torch.Generator().manual_seed(spec.seed)
    tensors: dict[str, Any] = {}
    for key, module in sorted(kohya_targets(pipe).items()):
        scale = spec.te_scale if key.startswith("lora_te_") else spec.unet_scale
        if scale == 0.0:
            continue
        weight = module.weight
        out_dim, in_dim = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        down = torch.randn((RANK, in_dim, *kernel), generator=generator) / in_dim**0.5
        up = torch.randn((out_dim, RANK, *(1 for _ in kernel)), generator=generator) * scale
        tensors[f"{key}.lora_down.weight"] = down.contiguous()
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
    return tensors


def lora_metadata(spec: DemoLora) -> dict[str, str]:
    """kohya-style training metadata (safetensors metadata values are strings)."""
    stem = Path(spec.relpath).stem
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(RANK),
        "ss_network_alpha": str(float(RANK)),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "loraprompt-demo",
        "ss_output_name": stem,
        "ss_resolution": "(256, 256)",
        "ss_num_epochs": "1",
        "ss_training_comment": "loraprompt built-in demo: random weights, draws noise",
        "ss_tag_frequency": json.dumps({"demo": {word: 10 - i for i, word in enumerate(spec.trigger_words)}}),
    }


def sidecar(spec: DemoLora) -> dict[str, Any]:
    """A1111's user-metadata sidecar (`<stem>.json`) for `spec`."""
    return {
        "description": spec.description,
        "sd version": "SD1",
        "activation text": spec.activation_text,
        "preferred weight": spec.preferred_weight,
        "negative text": "",
        "notes": "Written by loraprompt for the built-in demo model.",
    }


def preview_image(spec: DemoLora) -> Any:
    """A 256x256 card preview: the LoRA's colour as a gradient with its name written on it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(image)
    r, g, b = spec.color
    for y in range(256):
        f = 0.55 + 0.45 * y / 255
        draw.line([(0, y), (255, y)], fill=(int(r * f), int(g * f), int(b * f)))
    draw.text((12, 220), Path(spec.relpath).stem, fill=(255, 255, 255))
    return image


def write_demo_loras(pipe: Any, lora_dir: str | Path) -> list[Path]:
    """Write the demo LoRAs, previews and sidecars under `lora_dir`, keeping files already there."""
    from safetensors.torch import save_file

    root = Path(lora_dir)
    paths: list[Path] = []
    for spec in DEMO_LORAS:
        path = root / spec.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            save_file(lora_state_dict(pipe, spec), str(tmp), metadata=lora_metadata(spec))
            tmp.replace(path)
        preview = path.with_suffix(".preview.png")
        if not preview.exists():
            preview_image(spec).save(preview)
        meta = path.with_suffix(".json")
        if not meta.exists():
            meta.write_text(json.dumps(sidecar(spec), indent=4), encoding="utf-8")
        paths.append(path)
    return paths
