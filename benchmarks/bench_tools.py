"""Merge and extract on SD1.5-sized and SDXL-sized random checkpoints: loraprompt's streaming tools
against a naive peer (load every tensor with safetensors.torch.load_file, torch ops, save_file), in
the same run. Each measurement runs in its own process so its peak RSS is its own; each side runs
twice (ours, peer, peer, ours) and the faster run counts, since page-cache writeback on a shared
machine makes single runs noisy. The load average is printed with each family: on a shared machine
the ratios, measured in the same minutes, are what counts.

`--device cuda` runs the arithmetic of both sides on the GPU (tensors read and written on the CPU,
as `loraprompt merge|extract --device cuda` does) and adds each side's peak VRAM.

Run: flock /tmp/loraprompt-heavy.lock .venv/bin/python benchmarks/bench_tools.py [--families sd1 sdxl]
     [--device cpu|cuda] [--no-extract]
Files go to a temporary folder under /tmp and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

RANK = 32
PEER_LIMIT_GIB = 9.0  # the shared machine's budget for one heavy job
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
TE_PREFIX = {"sd1": {"text_encoder": ("cond_stage_model.transformer.", "lora_te_")},
             "sdxl": {"text_encoder": ("conditioner.embedders.0.transformer.", "lora_te1_"),
                      "text_encoder_2": ("conditioner.embedders.1.model.", "lora_te2_")}}
OPENCLIP = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _meta_models(family: str) -> dict[str, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loraprompt.models.checkpoint import family_config

    config = family_config(family)
    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel.from_config(config["unet"]),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))}
        if family == "sdxl":
            models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"]))
    return models


def _openclip_key(hf: str) -> tuple[str, int | None]:
    """OpenCLIP name of a transformers CLIP key, and the q/k/v slot inside in_proj when fused."""
    rest = hf.removeprefix("text_model.")
    if rest.startswith("encoder.layers."):
        _, _, n, child = rest.split(".", 3)
        module, _, param = child.rpartition(".")
        for slot, proj in enumerate(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
            if module == proj:
                return f"transformer.resblocks.{n}.attn.in_proj_{param}", slot
        return f"transformer.resblocks.{n}.{OPENCLIP[module]}.{param}", None
    table = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    return table.get(rest, "text_projection"), None


def layout(family: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[str, int | None, int]]]:
    """Single-file key -> shape, and kohya LoRA module -> (checkpoint key, q/k/v slot, rows)."""
    from loraprompt.keymaps.unet import to_ldm, up_levels_with_attention

    models = _meta_models(family)
    shapes: dict[str, tuple[int, ...]] = {}
    targets: dict[str, tuple[str, int | None, int]] = {}
    unet = dict(models["unet"].state_dict())
    up_attn = up_levels_with_attention({k.rpartition(".")[0] for k in unet})
    for key, t in unet.items():
        module, _, param = key.rpartition(".")
        ldm = f"model.diffusion_model.{to_ldm(module, up_attn)}.{param}"
        shapes[ldm] = tuple(t.shape)
        if param == "weight" and module.endswith(UNET_TARGETS):  # kohya names: SGM for SDXL, diffusers for SD1
            name = to_ldm(module, up_attn) if family == "sdxl" else module
            targets["lora_unet_" + name.replace(".", "_")] = (ldm, None, t.shape[0])
    for component, (prefix, lora_prefix) in TE_PREFIX[family].items():
        for key, t in models[component].state_dict().items():
            hf = key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}"
            module, _, param = hf.rpartition(".")
            if component == "text_encoder_2":
                name, slot = _openclip_key(hf)
                full = prefix + name
                shape = tuple(t.shape) if name != "text_projection" else tuple(reversed(t.shape))
                if slot is not None:
                    shape = (3 * shape[0], *shape[1:])
                shapes[full] = shape
            else:
                full, slot = prefix + hf, None
                shapes[full] = tuple(t.shape)
            if param == "weight" and module.endswith(TE_TARGETS):
                targets[lora_prefix + module.replace(".", "_")] = (full, slot, t.shape[0])
    return shapes, targets


def write_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Random fp16 tensors, written one at a time."""
    from loraprompt.tools.io import StreamingWriter

    gen = torch.Generator().manual_seed(0)
    with open(path, "wb") as handle:
        writer = StreamingWriter(handle, [(k, torch.float16, s) for k, s in shapes.items()])
        for key, shape in shapes.items():
            writer.write(key, (torch.randn(shape, generator=gen) * 0.02).half())
        writer.close()


def write_lora(path: Path, shapes: dict[str, tuple[int, ...]], targets: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for name, (key, _, width) in targets.items():
        fan_in = shapes[key][1] if len(shapes[key]) > 1 else 1
        extra = shapes[key][2:] if not key.endswith("in_proj_weight") else ()
        tensors[f"{name}.lora_down.weight"] = (torch.randn((RANK, fan_in, *extra), generator=gen) * 0.05).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn((width, RANK, *(1,) * len(extra)), generator=gen) * 0.05).half()
        tensors[f"{name}.alpha"] = torch.tensor(float(RANK / 2)).half()
    save_file(tensors, str(path))


def peer_merge(ckpt: Path, lora: Path, targets: dict[str, Any], out: Path, device: str = "cpu") -> None:
    """The naive way: everything in memory, W += scale · up @ down per module (on `device`), save_file."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(ckpt))
    lr = load_file(str(lora))
    for name, (key, slot, width) in targets.items():
        up, down = lr[f"{name}.lora_up.weight"].to(device).float(), lr[f"{name}.lora_down.weight"].to(device).float()
        scale = float(lr[f"{name}.alpha"]) / down.shape[0]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scale
        w = sd[key].to(device).float()
        rows = slice(None) if slot is None else slice(slot * width, (slot + 1) * width)
        w[rows] += delta
        sd[key] = w.half().cpu()
    save_file(sd, str(out))


def peer_extract(tuned: Path, base: Path, keys: list[str], out: Path, device: str = "cpu") -> None:
    """The naive way: both checkpoints in memory, torch.svd_lowrank per changed weight, save_file."""
    from safetensors.torch import load_file, save_file

    a, b = load_file(str(tuned)), load_file(str(base))
    lora = {}
    for key in keys:
        diff = a[key].to(device).float() - b[key].to(device).float()
        if float(diff.abs().max()) == 0.0:
            continue
        u, s, v = torch.svd_lowrank(diff.flatten(1), q=RANK + 16, niter=4)
        lora[f"{key}.lora_up.weight"] = (u[:, :RANK] * s[:RANK].sqrt()).half().cpu().contiguous()
        lora[f"{key}.lora_down.weight"] = (s[:RANK].sqrt()[:, None] * v[:, :RANK].T).half().cpu().contiguous()
    save_file(lora, str(out))


def child(task: str, work: Path, device: str) -> None:
    """One measured task in this process; prints seconds, peak RSS (and peak VRAM) as JSON."""
    targets = json.loads((work / "targets.json").read_text())
    ckpt, lora = work / "model.safetensors", work / "lora.safetensors"
    start = time.perf_counter()
    if task == "ours-merge":
        from loraprompt.tools.merge import merge_checkpoint

        merge_checkpoint(ckpt, [lora], work / "ours.safetensors", force=True, device=device)
    elif task == "peer-merge":
        peer_merge(ckpt, lora, targets, work / "peer.safetensors", device)
    elif task == "ours-extract":
        from loraprompt.tools.extract import extract_lora
        from loraprompt.tools.svd import RankTarget

        extract_lora(work / "ours.safetensors", ckpt, work / "x_ours.safetensors", RankTarget(rank=RANK), force=True,
                     device=device)
    elif task == "peer-extract":  # the same weights our extract examines: every eligible one
        from loraprompt.tools.checkpoint import open_checkpoint
        from loraprompt.tools.extract import _candidates

        found = _candidates(open_checkpoint(work / "ours.safetensors"), open_checkpoint(ckpt), None)
        keys = sorted({key for _, key, _, _ in found})
        peer_extract(work / "ours.safetensors", ckpt, keys, work / "x_peer.safetensors", device)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        result["vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _measure(task: str, work: Path, device: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", task, "--work", str(work), "--device", device],
                          check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{task} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _vram(r: dict[str, float]) -> str:
    return f" {r['vram_mb']:7.0f} MB VRAM" if "vram_mb" in r else ""


def run_family(family: str, root: Path, extract: bool, big_peer: bool, device: str) -> None:
    work = root / family
    work.mkdir()
    shapes, targets = layout(family)
    write_checkpoint(work / "model.safetensors", shapes)
    write_lora(work / "lora.safetensors", shapes, targets)
    (work / "targets.json").write_text(json.dumps(targets))
    size = (work / "model.safetensors").stat().st_size / 2**30
    print(f"{family}: checkpoint {size:.2f} GiB fp16, LoRA rank {RANK} on {len(targets)} modules, device {device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    pairs = [("merge", "ours-merge", "peer-merge")] + ([("extract", "ours-extract", "peer-extract")] if extract else [])
    for label, ours, peer in pairs:
        a = _measure(ours, work, device)
        if 2 * size <= PEER_LIMIT_GIB or big_peer:  # ours, peer, peer, ours: best of two cancels drift
            b = min(_measure(peer, work, device), _measure(peer, work, device), key=lambda r: r["seconds"])
            a = min(a, _measure(ours, work, device), key=lambda r: r["seconds"])
        if 2 * size > PEER_LIMIT_GIB and not big_peer:
            print(f"  {label:<8} loraprompt {a['seconds']:7.1f} s {a['peak_mb']:8.0f} MB peak{_vram(a)} | naive peer skipped: "
                  f"it holds ~{2 * size:.0f} GiB (two checkpoints, or one plus save_file's buffer); --big-peer runs it")
            continue
        print(f"  {label:<8} loraprompt {a['seconds']:7.1f} s {a['peak_mb']:8.0f} MB peak{_vram(a)} | "
              f"naive {b['seconds']:7.1f} s {b['peak_mb']:8.0f} MB peak{_vram(b)} | "
              f"time ratio {b['seconds'] / a['seconds']:.2f}x, memory ratio {b['peak_mb'] / a['peak_mb']:.2f}x")
    shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", nargs="+", default=["sd1", "sdxl"], choices=["sd1", "sdxl"])
    parser.add_argument("--no-extract", action="store_true")
    parser.add_argument("--big-peer", action="store_true", help="run the naive peer even past ~9 GiB of RAM")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both sides compute")
    parser.add_argument("--child")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.device)
        return
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="loraprompt-bench-tools-", dir="/tmp"))
    try:
        for family in args.families:
            run_family(family, root, not args.no_extract, args.big_peer, args.device)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
