"""Patching speed and memory: loraprompt vs diffusers + peft vs the machine's limit, in one run.

An SD1.5-sized UNet + CLIP-L text encoder (or an SDXL-sized UNet) is built from config with
random weights; two rank-16 LoRAs A and B are made with peft on that model (every Linear/1x1 conv
of the transformer blocks, the text encoder's attention and MLP) and written as kohya files with
diffusers' convert_state_dict_to_kohya. Then, on a fresh model:

- loraprompt: Patcher.sync([(A, 1, 1)]) / sync([(B, 1, 1)]) / sync([(A, .5, .5)]) / restore();
  "first apply" also takes the backups (after restore(release=True)), "apply" reuses them;
- diffusers + peft: load_lora_weights + fuse_lora; unfuse_lora + unload_lora_weights; a switch is
  both; a strength change is unfuse_lora + fuse_lora(lora_scale=.5);
- the limit: in-place addmm_ over the same weights (apply), torch.addmm from a backup into the
  weight (switch, strength), and a plain copy_ of backups (restore), all in the model's dtype
  (for fp16/bf16 that is half-precision math, where loraprompt sums in float32 by design).

Times are medians of --repeat runs; memory is the peak resident growth during the operation
(VmHWM, reset before each). Run it under the shared lock:
    flock /tmp/loraprompt-heavy.lock python -m benchmarks.bench_patch --model sd15
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

UNET_TARGETS = r".*(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|.*ff\.net\.(0\.proj|2)$|.*attentions\.\d+\.(proj_in|proj_out)$"
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(model: str, dtype: torch.dtype, seed: int = 0) -> dict[str, nn.Module]:
    """Random-weight components of the given size, from config."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if model in ("sd15", "tiny"):
        width, text = (320, 768) if model == "sd15" else (32, 64)
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=text, attention_head_dim=8,
            block_out_channels=(width, 2 * width, 4 * width, 4 * width), layers_per_block=2,
        )
        te = CLIPTextModel(CLIPTextConfig(
            hidden_size=text, intermediate_size=4 * text, num_hidden_layers=12 if model == "sd15" else 2,
            num_attention_heads=12 if model == "sd15" else 2, max_position_embeddings=77, vocab_size=49408,
            hidden_act="quick_gelu",
        ))
        return {"unet": unet.to(dtype).eval(), "text_encoder": te.to(dtype).eval()}
    unet = UNet2DConditionModel(
        sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )
    return {"unet": unet.to(dtype).eval()}


def make_loras(model: str, folder: Path, rank: int = 16, dtype: torch.dtype = torch.float32) -> list[Path]:
    """Two kohya LoRA files made with peft on the model (built in `dtype`) and converted by diffusers."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    components = build(model, dtype)
    paths = []
    for name in ("A", "B"):
        torch.manual_seed(len(paths) + 1)
        unet = components["unet"]
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=UNET_TARGETS), adapter_name=name)
        state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}
        if "text_encoder" in components:
            from peft import inject_adapter_in_model

            te = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                                    target_modules=TE_TARGETS), components["text_encoder"], name)
            te_state = get_peft_model_state_dict(te, adapter_name=name)
            state.update({f"text_encoder.text_model.{k}": v for k, v in te_state.items()})
        with torch.no_grad():  # gaussian init leaves B at zero: give it values, as after training
            for key, value in state.items():
                if "lora_B" in key:
                    value.normal_(0, 0.02)
        kohya = convert_state_dict_to_kohya(state)
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))
        paths.append(path)
    del components
    gc.collect()
    return paths


def rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def measure(fn: Callable[[], object], repeat: int, before: Callable[[], object] | None = None) -> tuple[float, float]:
    """(median seconds, peak extra MB) of fn, each run after `before`."""
    times, peaks = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        start_rss = rss_kb("VmRSS")
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        peaks.append((rss_kb("VmHWM") - start_rss) / 1024)
    return statistics.median(times), max(peaks)


def bench_loraprompt(components: dict[str, nn.Module], paths: list[Path], repeat: int) -> dict[str, tuple[float, float]]:
    from loraprompt import Patcher, read_adapter

    a, b = (read_adapter(p) for p in paths)
    patcher = Patcher(components, delta_cache_mb=0)
    out = {
        "first apply": measure(lambda: patcher.sync([(a, 1.0, 1.0)]), repeat, lambda: patcher.restore(release=True)),
        "apply": measure(lambda: patcher.sync([(a, 1.0, 1.0)]), repeat, patcher.restore),
        "switch": measure(lambda: patcher.sync([(b, 1.0, 1.0)]), repeat, lambda: patcher.sync([(a, 1.0, 1.0)])),
        "strength": measure(lambda: patcher.sync([(a, 0.5, 0.5)]), repeat, lambda: patcher.sync([(a, 1.0, 1.0)])),
        "restore": measure(patcher.restore, repeat, lambda: patcher.sync([(a, 1.0, 1.0)])),
    }
    patcher.sync([(a, 1.0, 1.0)])
    out["unchanged"] = measure(lambda: patcher.sync([(a, 1.0, 1.0)]), repeat)
    out["backups"] = (0.0, patcher.backup_nbytes / 2**20)
    patcher.restore()
    return out


def bench_limit(components: dict[str, nn.Module], paths: list[Path], repeat: int) -> dict[str, tuple[float, float]]:
    """addmm_/addmm/copy_ over exactly the weights loraprompt touches, with the same factors."""
    from loraprompt import read_adapter
    from loraprompt.keymaps import keymap_for_module

    weights: list[torch.Tensor] = []
    factors: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[], []]
    keymaps = {c: keymap_for_module(c, m) for c, m in components.items()}
    modules = {c: dict(m.named_modules()) for c, m in components.items()}
    for i, path in enumerate(paths):
        for module in read_adapter(path).modules.values():
            target = keymaps[module.component].lookup(module.path)
            if target is None:
                continue
            weight = getattr(modules[module.component][target.module], target.param)
            up = module.tensors["up"].reshape(weight.shape[0], -1).to(weight.dtype) * module.scale
            down = module.tensors["down"].reshape(up.shape[1], -1).to(weight.dtype)
            if i == 0:
                weights.append(weight)
            factors[i].append((up, down))
    views = [w.detach().view(w.shape[0], -1) for w in weights]
    backups = [v.clone() for v in views]

    def apply(which: int, scale: float = 1.0) -> None:
        for v, (up, down) in zip(views, factors[which]):
            v.addmm_(up, down, alpha=scale)

    def from_backup(which: int, scale: float = 1.0) -> None:
        for v, base, (up, down) in zip(views, backups, factors[which]):
            torch.addmm(base, up, down, alpha=scale, out=v)

    def restore() -> None:
        for v, base in zip(views, backups):
            v.copy_(base)

    with torch.no_grad():
        out = {
            "first apply": measure(lambda: apply(0), repeat, restore),
            "apply": measure(lambda: apply(0), repeat, restore),
            "switch": measure(lambda: from_backup(1), repeat, lambda: from_backup(0)),
            "strength": measure(lambda: from_backup(0, 0.5), repeat, lambda: from_backup(0)),
            "restore": measure(restore, repeat, lambda: apply(0)),
            "backups": (0.0, sum(b.nbytes for b in backups) / 2**20),
        }
        restore()
    return out


def bench_peer(components: dict[str, nn.Module], paths: list[Path], repeat: int) -> dict[str, tuple[float, float]]:
    """diffusers + peft: load_lora_weights + fuse_lora, unfuse_lora + unload_lora_weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp())
    (folder / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=components["text_encoder"], tokenizer=tokenizer, unet=components["unet"],
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    original = {k: v.clone() for k, v in components["unet"].state_dict().items() if k.endswith("to_q.weight")}

    loaded: list[int] = []

    def load(i: int) -> None:
        unload()
        pipe.load_lora_weights(str(paths[i]), adapter_name="AB"[i])
        pipe.fuse_lora(lora_scale=1.0)
        loaded.append(i)

    def unload() -> None:
        if loaded:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
            loaded.clear()


    def strength() -> None:
        pipe.unfuse_lora()
        pipe.fuse_lora(lora_scale=0.5)

    out = {
        "first apply": measure(lambda: load(0), repeat, unload),
        "apply": measure(lambda: load(0), repeat, unload),
        "restore": measure(unload, repeat, lambda: load(0)),
    }
    out["switch"] = measure(lambda: load(1), repeat, lambda: load(0))
    load(0)
    out["strength"] = measure(strength, repeat, lambda: (pipe.unfuse_lora(), pipe.fuse_lora(lora_scale=1.0)))
    unload()
    now = components["unet"].state_dict()
    drift = max(float((now[k] - v).abs().max()) for k, v in original.items())
    out["drift"] = (drift, 0.0)
    return out


def quiet() -> None:
    """Silence the libraries' progress bars and advice."""
    import warnings

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    warnings.filterwarnings("ignore")
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "sdxl", "tiny"], default="sd15", help="tiny: a smoke run")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true", help="skip diffusers + peft (memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    dtype = DTYPES[args.dtype]
    folder = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    paths = make_loras(args.model, folder, dtype=dtype if args.model == "sdxl" else torch.float32)
    components = build(args.model, dtype)
    print(f"# {args.model} {args.dtype}, {args.threads} thread(s), LoRAs made in {time.perf_counter() - t0:.0f}s")
    results = {"loraprompt": bench_loraprompt(components, paths, args.repeat),
               "limit": bench_limit(components, paths, args.repeat)}
    if not args.no_peer and args.model != "sdxl":
        results["diffusers+peft"] = bench_peer(components, paths, args.repeat)
    report(results)


def report(results: dict[str, dict[str, tuple[float, float]]]) -> None:
    ours, limit, peer = results["loraprompt"], results["limit"], results.get("diffusers+peft")
    print(f"touched weights (backups): loraprompt {ours['backups'][1]:.0f} MB, limit {limit['backups'][1]:.0f} MB")
    head = f"{'op':11} {'loraprompt':>11} {'limit':>9} {'ours/limit':>10}"
    if peer:
        head += f" {'diff+peft':>10} {'peer/ours':>9}"
    print(head + f" {'our peak MB':>11} {'limit MB':>9}" + (f" {'peer MB':>8}" if peer else ""))
    for op in ("first apply", "apply", "switch", "strength", "restore"):
        line = f"{op:11} {ours[op][0]:10.3f}s {limit[op][0]:8.3f}s {ours[op][0] / limit[op][0]:9.2f}x"
        if peer:
            line += f" {peer[op][0]:9.3f}s {peer[op][0] / ours[op][0]:8.1f}x"
        line += f" {ours[op][1]:11.0f} {limit[op][1]:9.0f}" + (f" {peer[op][1]:8.0f}" if peer else "")
        print(line)
    print(f"loraprompt sync with nothing changed (a step of a static prompt): {ours['unchanged'][0] * 1e3:.2f} ms")
    if peer:
        print(f"diffusers+peft max |drift| of to_q weights after fuse/unfuse cycles: {peer['drift'][0]:.3g}")


if __name__ == "__main__":
    main()
