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
  (for fp16/bf16 that is half-precision math, where loraprompt sums in float32).

On a GPU (--device cuda) loraprompt runs once per --backups place (device: backups on the card;
host: in pinned host memory) and the limit has a host variant: the pinned host->device copy of the
touched weights. --per-step (default on CUDA) also times one UNet step (batch 2, 512² for SD1.5,
1024² for SDXL) without LoRA, with a step-scheduled LoRA run unfused by loraprompt (its sync per
step included), and with the LoRA unfused by peft.

Times are medians of --repeat runs (synchronised with the device on CUDA); memory is the peak
extra memory during the operation: resident growth (VmHWM, reset before each) on the CPU, peak
allocated VRAM above what was allocated before on CUDA. "held" is what the Patcher keeps between
generations (backups, caches, scratch). Run it under the shared lock:
    flock /tmp/loraprompt-heavy.lock python -m benchmarks.bench_patch --model sd15
On a GPU machine: benchmarks/gpu_run.sh.
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
from typing import Any

import torch
from torch import nn

UNET_TARGETS = r".*(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|.*ff\.net\.(0\.proj|2)$|.*attentions\.\d+\.(proj_in|proj_out)$"
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
DELTA_CACHE_MB: float | None = None  # --delta-cache-mb; None: the Patcher's default (factors kept on the device)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(model: str, dtype: torch.dtype, seed: int = 0, device: str = "cpu") -> dict[str, nn.Module]:
    """Random-weight components of the given size, from config (initialised on `device`)."""
    with torch.device(device):
        return _build(model, dtype, seed)


def _build(model: str, dtype: torch.dtype, seed: int) -> dict[str, nn.Module]:
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


def make_loras(model: str, folder: Path, rank: int = 16, dtype: torch.dtype = torch.float32,
               device: str = "cpu") -> list[Path]:
    """Two kohya LoRA files made with peft on the model (built in `dtype`) and converted by diffusers."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    components = build(model, dtype, device=device)
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
        save_file({k: v.detach().cpu().contiguous() for k, v in kohya.items()}, str(path))
        paths.append(path)
    del components
    gc.collect()
    return paths


def rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def measure(fn: Callable[[], object], repeat: int, before: Callable[[], object] | None = None) -> tuple[float, float]:
    """(median seconds, peak extra MB) of fn, each run after `before`."""
    times, peaks = [], []
    for _ in range(repeat):
        if before is not None:
            before()
        gc.collect()
        sync()
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats(DEVICE)
            start = torch.cuda.memory_allocated(DEVICE)
        else:
            Path("/proc/self/clear_refs").write_text("5")
            start = rss_kb("VmRSS") * 1024
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(DEVICE) if DEVICE.type == "cuda" else rss_kb("VmHWM") * 1024
        peaks.append((peak - start) / 2**20)
    return statistics.median(times), max(peaks)


def allocated() -> int:
    gc.collect()
    sync()
    return torch.cuda.memory_allocated(DEVICE) if DEVICE.type == "cuda" else rss_kb("VmRSS") * 1024


def bench_loraprompt(components: dict[str, nn.Module], paths: list[Path], repeat: int,
                     backups: str = "auto") -> dict[str, tuple[float, float]]:
    from loraprompt import Patcher, read_adapter

    a, b = (read_adapter(p) for p in paths)
    before = allocated()
    patcher = Patcher(components, backups=backups, **({} if DELTA_CACHE_MB is None else {"delta_cache_mb": DELTA_CACHE_MB}))
    out = {
        "first apply": measure(lambda: patcher.sync([(a, 1.0, 1.0)]), repeat, lambda: patcher.restore(release=True)),
        "apply": measure(lambda: patcher.sync([(a, 1.0, 1.0)]), repeat, patcher.restore),
        "switch": measure(lambda: patcher.sync([(b, 1.0, 1.0)]), repeat, lambda: patcher.sync([(a, 1.0, 1.0)])),
        "strength": measure(lambda: patcher.sync([(a, 0.5, 0.5)]), repeat, lambda: patcher.sync([(a, 1.0, 1.0)])),
        "restore": measure(patcher.restore, repeat, lambda: patcher.sync([(a, 1.0, 1.0)])),
    }
    patcher.sync([(a, 1.0, 1.0)])
    out["unchanged"] = measure(lambda: patcher.sync([(a, 1.0, 1.0)]), repeat)
    # factor sets a switch had to make (0: all from the cache; every touched weight: it thrashes)
    made = [patcher.sync([(x, 1.0, 1.0)]) for x in (b, a)]
    out["factors made"] = (float(max(r.factors_built for r in made)), float(made[-1].patched))
    out["backups"] = (0.0, patcher.backup_nbytes / 2**20)
    placed = patcher.backup_bytes
    out["backups on device"] = (0.0, placed["device"] / 2**20)
    out["held"] = (0.0, (allocated() - before) / 2**20)
    weights = [w for w, _ in patcher._params.values()]
    out["largest weight fp32"] = (0.0, max(w.numel() for w in weights) * 4 / 2**20)
    patcher.restore(release=True)
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
            up = module.tensors["up"].reshape(weight.shape[0], -1).to(weight) * module.scale
            down = module.tensors["down"].reshape(up.shape[1], -1).to(weight)
            if i == 0:
                weights.append(weight)
            factors[i].append((up, down))
    views = [w.detach().view(w.shape[0], -1) for w in weights]
    backups = [v.clone() for v in views]
    pinned = [v.cpu().pin_memory() for v in views] if DEVICE.type == "cuda" else []

    def apply(which: int, scale: float = 1.0) -> None:
        for v, (up, down) in zip(views, factors[which]):
            v.addmm_(up, down, alpha=scale)

    def from_backup(which: int, scale: float = 1.0) -> None:
        for v, base, (up, down) in zip(views, backups, factors[which]):
            torch.addmm(base, up, down, alpha=scale, out=v)

    def restore() -> None:
        for v, base in zip(views, backups):
            v.copy_(base)

    def from_host() -> None:  # the host-backup limit: the pinned host->device copy of the weights
        for v, base in zip(views, pinned):
            v.copy_(base, non_blocking=True)

    with torch.no_grad():
        out = {
            "first apply": measure(lambda: apply(0), repeat, restore),
            "apply": measure(lambda: apply(0), repeat, restore),
            "switch": measure(lambda: from_backup(1), repeat, lambda: from_backup(0)),
            "strength": measure(lambda: from_backup(0, 0.5), repeat, lambda: from_backup(0)),
            "restore": measure(restore, repeat, lambda: apply(0)),
            "backups": (0.0, sum(b.nbytes for b in backups) / 2**20),
        }
        if pinned:
            out["host copy"] = measure(from_host, repeat, lambda: apply(0))
        restore()
    return out


def bench_peer(components: dict[str, nn.Module], paths: list[Path], repeat: int) -> dict[str, tuple[float, float]]:
    """diffusers + peft: load_lora_weights + fuse_lora, unfuse_lora + unload_lora_weights on a
    StableDiffusionPipeline; for a UNet alone (SDXL here), the same on the UNet (load_lora_adapter
    after the pipeline's lora_state_dict conversion, fuse_lora, unfuse_lora, unload_lora)."""
    unet = components["unet"]
    if "text_encoder" in components:
        pipe = _peer_pipeline(components)

        def fuse(i: int) -> None:
            pipe.load_lora_weights(str(paths[i]), adapter_name="AB"[i])
            pipe.fuse_lora(lora_scale=1.0)

        def unfuse(scale: float | None = None) -> None:
            pipe.unfuse_lora()
            if scale is None:
                pipe.unload_lora_weights()
            else:
                pipe.fuse_lora(lora_scale=scale)
    else:
        from diffusers import StableDiffusionXLPipeline

        def fuse(i: int) -> None:
            state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(paths[i]))[:2]
            unet.load_lora_adapter({k: v for k, v in state.items() if k.startswith("unet.")}, prefix="unet",
                                   network_alphas=alphas, adapter_name="AB"[i])
            unet.fuse_lora(lora_scale=1.0)

        def unfuse(scale: float | None = None) -> None:
            unet.unfuse_lora()
            if scale is None:
                unet.unload_lora()
            else:
                unet.fuse_lora(lora_scale=scale)

    original = {k: v.clone() for k, v in unet.state_dict().items() if k.endswith("to_q.weight")}
    loaded: list[int] = []

    def load(i: int) -> None:
        unload()
        fuse(i)
        loaded.append(i)

    def unload() -> None:
        if loaded:
            unfuse()
            loaded.clear()

    out = {
        "first apply": measure(lambda: load(0), repeat, unload),
        "apply": measure(lambda: load(0), repeat, unload),
        "restore": measure(unload, repeat, lambda: load(0)),
    }
    out["switch"] = measure(lambda: load(1), repeat, lambda: load(0))
    load(0)
    out["strength"] = measure(lambda: unfuse(0.5), repeat, lambda: unfuse(1.0))
    unload()
    now = unet.state_dict()
    drift = max(float((now[k].float() - v.float()).abs().max()) for k, v in original.items())
    out["drift"] = (drift, 0.0)
    return out


def _peer_pipeline(components: dict[str, nn.Module]) -> Any:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp())
    (folder / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=components["text_encoder"], tokenizer=tokenizer, unet=components["unet"],
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def step_inputs(model: str, dtype: torch.dtype, latent: int, batch: int = 2) -> tuple[tuple, dict]:
    """One UNet step's inputs: 4x(latent)² noise, a timestep, text states (and SDXL's extras)."""
    gen = torch.Generator(DEVICE).manual_seed(0)
    sample = torch.randn(batch, 4, latent, latent, generator=gen, device=DEVICE).to(dtype)
    width = 768 if model == "sd15" else 2048 if model == "sdxl" else 64
    context = torch.randn(batch, 77, width, generator=gen, device=DEVICE).to(dtype)
    kwargs: dict = {"encoder_hidden_states": context}
    if model == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, 1280, device=DEVICE, dtype=dtype),
                                       "time_ids": torch.zeros(batch, 6, device=DEVICE, dtype=dtype)}
    return (sample, torch.tensor(500, device=DEVICE)), kwargs


def bench_steps(model: str, components: dict[str, nn.Module], paths: list[Path], repeat: int, *,
                latent: int, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """One UNet step: plain; with LoRA A scheduled (its strength changes every step) run unfused by
    loraprompt, the per-step sync included; with A fused; with A unfused by peft."""
    from loraprompt import Patcher, read_adapter
    from loraprompt.plan import PlanEntry

    unet = components["unet"]
    args, kwargs = step_inputs(model, dtype, latent)

    def step() -> None:
        with torch.no_grad():
            unet(*args, **kwargs)

    step()
    out = {"plain": measure(step, repeat)}
    adapter = read_adapter(paths[0])
    patcher = Patcher(components, schedules="unfused", delta_cache_mb=256)
    entry = PlanEntry(adapter, te=1.0, unet=0.5, unet_at=lambda s, n: 0.25 + 0.5 * s / n)
    counter = {"step": 0}

    def scheduled() -> None:
        patcher.sync([entry], step=counter["step"] % 20, total_steps=20)
        counter["step"] += 1
        step()

    scheduled()
    out["scheduled, unfused (loraprompt)"] = measure(scheduled, repeat)
    out["sync per step (loraprompt)"] = measure(
        lambda: (patcher.sync([entry], step=counter["step"] % 20, total_steps=20), counter.update(step=counter["step"] + 1)),
        repeat)
    patcher.sync([(adapter, 1.0, 1.0)])
    out["fused"] = measure(step, repeat)
    patcher.restore(release=True)
    try:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        pipeline = StableDiffusionPipeline if model != "sdxl" else StableDiffusionXLPipeline
        state, alphas = pipeline.lora_state_dict(str(paths[0]))[:2]
        unet.load_lora_adapter({k: v for k, v in state.items() if k.startswith("unet.")}, prefix="unet",
                               network_alphas=alphas, adapter_name="A")
        unet.set_adapters(["A"], weights=[0.5])
        step()
        out["unfused (peft)"] = measure(step, repeat)
        unet.unload_lora()
    except Exception as exc:  # the peer's API moves between diffusers versions: report, go on
        print(f"# peft unfused step skipped: {type(exc).__name__}: {exc}")
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
    global DEVICE, DELTA_CACHE_MB
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "sdxl", "tiny"], default="sd15", help="tiny: a smoke run")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--backups", default=None,
                        help="comma-separated Patcher backups places to measure (default: device,host on CUDA)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16; 32 for sdxl)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true", help="skip diffusers + peft (memory)")
    parser.add_argument("--per-step", action=argparse.BooleanOptionalAction, default=None,
                        help="time a UNet step with a scheduled LoRA (default: on CUDA only)")
    parser.add_argument("--latent", type=int, default=None, help="latent size of the step (default 64, sdxl 128)")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over one switch A->B and one restore: where the time goes")
    parser.add_argument("--delta-cache-mb", type=float, default=None,
                        help="the Patcher's delta/factor cache (default: its default; 0 recomputes factors every sync)")
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    DELTA_CACHE_MB = args.delta_cache_mb
    torch.set_num_threads(args.threads)
    quiet()
    dtype = DTYPES[args.dtype]
    cuda = DEVICE.type == "cuda"
    places = (args.backups or ("device,host" if cuda else "auto")).split(",")
    rank = args.rank or (32 if args.model == "sdxl" else 16)
    folder = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    paths = make_loras(args.model, folder, rank=rank, dtype=dtype if args.model == "sdxl" or cuda else torch.float32,
                       device=args.device)
    components = build(args.model, dtype, device=args.device)
    name = torch.cuda.get_device_name(DEVICE) if cuda else "CPU"
    print(f"# {args.model} {args.dtype} rank {rank} on {name} ({args.threads} thread(s)), torch {torch.__version__}, "
          f"LoRAs made in {time.perf_counter() - t0:.0f}s")
    if args.profile:
        profile(components, paths, places[0])
    results = {f"loraprompt {p}": bench_loraprompt(components, paths, args.repeat, p) for p in places}
    results["limit"] = bench_limit(components, paths, args.repeat)
    if not args.no_peer:
        try:
            results["diffusers+peft"] = bench_peer(components, paths, args.repeat)
        except Exception as exc:  # the peer's API moves between diffusers versions: report, go on
            print(f"# diffusers+peft skipped: {type(exc).__name__}: {exc}")
    report(results)
    if args.per_step if args.per_step is not None else cuda:
        latent = args.latent or (128 if args.model == "sdxl" else 64 if args.model == "sd15" else 8)
        steps = bench_steps(args.model, components, paths, args.repeat, latent=latent, dtype=dtype)
        report_steps(steps, latent)


def profile(components: dict[str, nn.Module], paths: list[Path], backups: str) -> None:
    """torch.profiler over a switch and a restore: the ops by self time (CPU and, on CUDA, device)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from loraprompt import Patcher, read_adapter

    a, b = (read_adapter(p) for p in paths)
    patcher = Patcher(components, delta_cache_mb=0, backups=backups)
    patcher.sync([(b, 1.0, 1.0)])  # both resolved (mapped and checked once) and backed up
    patcher.sync([(a, 1.0, 1.0)])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    for label, fn in (("switch A->B", lambda: patcher.sync([(b, 1.0, 1.0)])), ("restore", patcher.restore)):
        sync()
        with torch_profile(activities=activities) as prof:
            fn()
            sync()
        key = "self_cuda_time_total" if DEVICE.type == "cuda" else "self_cpu_time_total"
        print(f"\n## profile: {label}")
        print(prof.key_averages().table(sort_by=key, row_limit=12))
        patcher.sync([(a, 1.0, 1.0)])
    patcher.restore(release=True)


def report(results: dict[str, dict[str, tuple[float, float]]]) -> None:
    limit, peer = results["limit"], results.get("diffusers+peft")
    ours_all = {k: v for k, v in results.items() if k.startswith("loraprompt")}
    first = next(iter(ours_all.values()))
    print(f"touched weights (backups): loraprompt {first['backups'][1]:.0f} MB, limit {limit['backups'][1]:.0f} MB")
    for label, ours in ours_all.items():
        host = label.endswith("host")
        print(f"\n## {label}: backups on device {ours['backups on device'][1]:.0f} MB; held between generations "
              f"{ours['held'][1]:.0f} MB (largest touched weight in float32: {ours['largest weight fp32'][1]:.0f} MB)")
        head = f"{'op':11} {'loraprompt':>11} {'limit':>9} {'ours/limit':>10}"
        if peer:
            head += f" {'diff+peft':>10} {'peer/ours':>9}"
        print(head + f" {'our peak MB':>11} {'limit MB':>9}" + (f" {'peer MB':>8}" if peer else ""))
        for op in ("first apply", "apply", "switch", "strength", "restore"):
            lim = limit["host copy"] if host and "host copy" in limit and op in ("switch", "strength", "restore") \
                else limit[op]
            line = f"{op:11} {ours[op][0]:10.4f}s {lim[0]:8.4f}s {ours[op][0] / lim[0]:9.2f}x"
            if peer:
                line += f" {peer[op][0]:9.4f}s {peer[op][0] / ours[op][0]:8.1f}x"
            line += f" {ours[op][1]:11.0f} {lim[1]:9.0f}" + (f" {peer[op][1]:8.0f}" if peer else "")
            print(line)
        print(f"sync with nothing changed (a step of a static prompt): {ours['unchanged'][0] * 1e3:.2f} ms")
        made, touched = ours["factors made"]
        print(f"LoRA factor sets made by a switch A->B->A (not in the factor cache): {made:.0f} per switch, "
              f"{touched:.0f} weights patched")
        if host:
            print("(host: switch/strength/restore limits are the pinned host->device copy of the touched weights)")
    if "host copy" in limit:
        print(f"\nlimit: pinned host->device copy of the touched weights {limit['host copy'][0] * 1e3:.2f} ms; "
              f"restore (device copy_) {limit['restore'][0] * 1e3:.2f} ms")
    if peer:
        print(f"diffusers+peft max |drift| of to_q weights after fuse/unfuse cycles: {peer['drift'][0]:.3g}")


def report_steps(steps: dict[str, tuple[float, float]], latent: int) -> None:
    plain = steps["plain"][0]
    print(f"\n## one UNet step, batch 2, latent {latent}² ({latent * 8}² pixels)")
    for label, (seconds, peak) in steps.items():
        extra = "" if label == "plain" else f"  {100 * (seconds - plain) / plain:+.1f}% of a step"
        print(f"{label:34} {seconds * 1e3:9.2f} ms  peak +{peak:.0f} MB{extra}")


if __name__ == "__main__":
    main()
