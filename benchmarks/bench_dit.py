"""LoRA switch and restore on a Flux.1 transformer: loraprompt vs diffusers + peft vs the in-place limit.

A FluxTransformer2DModel is built from config with random weights (--double/--single blocks at
--width; Flux.1-dev is 19/38/3072, about 24 GB in bf16: a GPU run, e.g. --device cuda on an H200;
the CPU default is a few blocks at the real width). Two rank --rank PEFT LoRAs A and B on every
attention and MLP Linear are written with FluxPipeline.save_lora_weights, and A also as a kohya
file with fused q/k/v (BFL names), so the row-split path is timed too. Then, on one model:

- loraprompt: Patcher.sync A (first apply, takes the backups), switch A -> B, switch B -> A
  (kohya file), restore();
- diffusers + peft: load_lora_adapter + fuse_lora (apply), unfuse_lora + unload + load + fuse
  (switch), unfuse_lora + unload_lora (restore);
- the limit: one in-place addmm_ of rank-r factors into each touched weight (apply/switch) and a
  copy_ of each touched weight (restore), in the model's dtype.

Times are medians of --repeat runs, printed with the ratio to diffusers + peft and to the limit.

--per-step first times one transformer forward (batch 1, --tokens image tokens, 512 text tokens)
plain and with A scheduled (a strength that changes every step, as `<lora:a:0@0,1@1>`): run in
the forward by loraprompt (schedules="unfused", the per-step sync included), rewritten into the
weights every step (schedules="fused"), and by peft's unfused layers; each against the plain step.
    python -m benchmarks.bench_dit                     # CPU, 2 double + 2 single blocks, bf16
    python -m benchmarks.bench_dit --device cuda --double 19 --single 38
    python -m benchmarks.bench_dit --device cuda --double 4 --single 8 --steps-only   # per-step cost

--nf4 quantizes the touched Linears to bitsandbytes NF4 (as Forge runs Flux on small cards) after
the LoRAs are written, then times a step plain, with A at a constant strength and scheduled (both
run beside the packed weight in the forward: loraprompt never rewrites NF4), and with peft's LoRA
layer on bitsandbytes' Linear4bit; and a switch A -> B: loraprompt's sync against peft's unload +
load (nothing is fused on NF4, by either).
    python -m benchmarks.bench_dit --device cuda --double 4 --single 8 --nf4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeat: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    heads = args.width // 128
    with torch.device(device):
        model = FluxTransformer2DModel(num_layers=args.double, num_single_layers=args.single, attention_head_dim=128,
                                       num_attention_heads=heads, guidance_embeds=True).to(dtype)
    return model.eval().requires_grad_(False)


def write_loras(model: torch.nn.Module, rank: int, root: Path) -> tuple[Path, Path, Path]:
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
               "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]
    paths = []
    for name, seed in (("a", 1), ("b", 2)):
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights="gaussian"), adapter_name=name)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            _fill(model, name, gen)
        state = {k: v.cpu() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
        FluxPipeline.save_lora_weights(str(root), transformer_lora_layers=state, weight_name=f"{name}.safetensors")
        paths.append(root / f"{name}.safetensors")
        model.delete_adapters(name)
    model.unload_lora()  # the PEFT wrappers go: the patcher sees the plain model
    kohya = _kohya_from(paths[0], root / "a_kohya.safetensors")
    return paths[0], paths[1], kohya


def _fill(model: torch.nn.Module, name: str, gen: torch.Generator) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                for weight in (module.lora_A[name].weight, module.lora_B[name].weight):
                    weight.copy_((torch.randn(weight.shape, generator=gen) * 0.01).to(weight))


def _kohya_from(peft: Path, out: Path) -> Path:
    """The PEFT file's q/k/v (and single blocks' q/k/v/MLP) fused under BFL names, block-diagonal ups."""
    import re

    from safetensors.torch import load_file, save_file

    sd = load_file(str(peft))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in sd.items():
        if key.endswith("lora_A.weight"):
            module = key[len("transformer.") : -len(".lora_A.weight")]
            factors[module] = (a, sd[key.replace("lora_A", "lora_B")])
    out_sd: dict[str, torch.Tensor] = {}
    groups: dict[str, list[str]] = {}
    for module in factors:
        m = re.match(r"transformer_blocks\.(\d+)\.attn\.(to_[qkv]|add_[qkv]_proj)$", module)
        s = re.match(r"single_transformer_blocks\.(\d+)\.(?:attn\.to_[qkv]|proj_mlp)$", module)
        if m:
            groups.setdefault(f"double_blocks_{m[1]}_{'img' if m[2].startswith('to_') else 'txt'}_attn_qkv", []).append(module)
        elif s:
            groups.setdefault(f"single_blocks_{s[1]}_linear1", []).append(module)
        else:
            out_sd[f"lora_transformer_{module.replace('.', '_')}.lora_down.weight"] = factors[module][0]
            out_sd[f"lora_transformer_{module.replace('.', '_')}.lora_up.weight"] = factors[module][1]
    order = {"to_q": 0, "to_k": 1, "to_v": 2, "add_q_proj": 0, "add_k_proj": 1, "add_v_proj": 2, "proj_mlp": 3}
    for native, modules in groups.items():
        modules.sort(key=lambda m: order[m.rsplit(".", 1)[-1]])
        out_sd[f"lora_unet_{native}.lora_down.weight"] = torch.cat([factors[m][0] for m in modules])
        out_sd[f"lora_unet_{native}.lora_up.weight"] = torch.block_diag(*[factors[m][1] for m in modules])
        out_sd[f"lora_unet_{native}.alpha"] = torch.tensor(float(out_sd[f"lora_unet_{native}.lora_down.weight"].shape[0]))
    save_file({k: v.contiguous() for k, v in out_sd.items()}, str(out))
    return out


TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "net.0.proj", "net.2", "proj_mlp", "proj_out")


def to_nf4(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> int:
    """Every touched Linear becomes a bitsandbytes NF4 Linear4bit computing in `dtype` (quantized when
    moved to `device`); returns how many."""
    import bitsandbytes as bnb

    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, torch.nn.Linear) or not full.endswith(TARGETS):
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=dtype, quant_type="nf4", device="cpu")
            q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
            setattr(module, child_name, q.to(device))
            count += 1
    return count


def bench_steps(model: torch.nn.Module, path_a: Path, args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype) -> dict[str, float]:
    """One forward: plain; A scheduled (unfused by loraprompt / rewritten each step / peft unfused);
    on NF4 weights also A at a constant strength, and no rewriting (NF4 is never rewritten)."""
    from diffusers import FluxPipeline

    from loraprompt import Patcher, read_adapter
    from loraprompt.plan import PlanEntry

    config = model.config
    gen = torch.Generator(device).manual_seed(0)
    text = 512
    inputs = dict(
        hidden_states=torch.randn(1, args.tokens, config.in_channels, generator=gen, device=device).to(dtype),
        encoder_hidden_states=torch.randn(1, text, config.joint_attention_dim, generator=gen, device=device).to(dtype),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=gen, device=device).to(dtype),
        timestep=torch.tensor([0.5], device=device, dtype=dtype), guidance=torch.tensor([3.5], device=device, dtype=dtype),
        img_ids=torch.zeros(args.tokens, 3, device=device, dtype=dtype), txt_ids=torch.zeros(text, 3, device=device, dtype=dtype),
    )

    def forward() -> None:
        with torch.no_grad():
            model(**inputs)

    forward()
    out = {"plain step": _timed(forward, device, args.repeat)}
    adapter = read_adapter(path_a)
    entry = PlanEntry(adapter, te=1.0, unet=0.5, unet_at=lambda s, n: 0.25 + 0.5 * s / n)
    if args.nf4:
        patcher = Patcher({"transformer": model})
        report = patcher.sync([(adapter, 1.0, 0.5)])
        assert set(report.paths.values()) == {"unfused (nf4)"}, report.paths  # beside the packed weights, none written
        out["constant, in the forward"] = _timed(forward, device, args.repeat)
        patcher.restore(release=True)
    kinds = (("scheduled, in the forward", "unfused"),) + ((("scheduled, rewritten each step", "fused"),) if not args.nf4 else ())
    for label, schedules in kinds:
        patcher = Patcher({"transformer": model}, schedules=schedules)
        counter = {"step": 0}

        def scheduled(patcher: Patcher = patcher, counter: dict = counter) -> None:
            patcher.sync([entry], step=counter["step"] % 20, total_steps=20)
            counter["step"] += 1
            forward()

        scheduled()
        out[label] = _timed(scheduled, device, args.repeat)
        patcher.restore(release=True)
    try:
        state, alphas = FluxPipeline.lora_state_dict(str(path_a), return_alphas=True)
        FluxPipeline.load_lora_into_transformer(state, network_alphas=alphas, transformer=model, adapter_name="a")
        model.set_adapters(["a"], weights=[0.5])
        forward()
        out["unfused (peft)"] = _timed(forward, device, args.repeat)
        model.unload_lora()
    except Exception as exc:  # the peer's API moves between diffusers versions: report, go on
        print(f"# peft unfused step skipped: {type(exc).__name__}: {exc}")
    return out


def bench_nf4_switch(model: torch.nn.Module, path_a: Path, path_b: Path, args: argparse.Namespace,
                     device: torch.device) -> None:
    """A -> B on NF4 weights: loraprompt's sync (the low-rank paths change, no weight is written)
    against peft's unload + load of unfused LoRA layers on Linear4bit."""
    from diffusers import FluxPipeline

    from loraprompt import Patcher, read_adapter

    a, b = read_adapter(path_a), read_adapter(path_b)
    patcher = Patcher({"transformer": model})
    patcher.sync([(a, 1, 1)])
    ours = _timed(lambda: (patcher.sync([(b, 1, 1)]), patcher.sync([(a, 1, 1)])), device, args.repeat) / 2
    patcher.restore(release=True)

    def load(path: Path, name: str) -> None:
        state, alphas = FluxPipeline.lora_state_dict(str(path), return_alphas=True)
        FluxPipeline.load_lora_into_transformer(state, network_alphas=alphas, transformer=model, adapter_name=name)

    load(path_a, "a")
    peer = _timed(lambda: (model.unload_lora(), load(path_b, "b"), model.unload_lora(), load(path_a, "a")),
                  device, args.repeat) / 2
    model.unload_lora()
    print(f"switch A -> B on NF4 weights: loraprompt {ours * 1e3:.1f}ms, peft (unload + load) {peer * 1e3:.1f}ms, "
          f"{peer / ours:.2f}x", flush=True)


def print_steps(steps: dict[str, float], args: argparse.Namespace) -> None:
    plain = steps["plain step"]
    weights = ", NF4 weights" if args.nf4 else ""
    print(f"Flux transformer {args.double} double + {args.single} single blocks, width {args.width}{weights}, rank {args.rank}; "
          f"one step, batch 1, {args.tokens} image + 512 text tokens:", flush=True)
    for op, t in steps.items():
        print(f"  {op:34} {t * 1e3:9.1f}ms  {(t / plain - 1) * 100:+7.1f}% vs plain", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--double", type=int, default=2)
    parser.add_argument("--single", type=int, default=2)
    parser.add_argument("--width", type=int, default=3072)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-step", action="store_true", help="first time a transformer step with a scheduled LoRA")
    parser.add_argument("--steps-only", action="store_true", help="--per-step, then stop (no switch/restore tables)")
    parser.add_argument("--tokens", type=int, default=None, help="image tokens per step (default 4096 = 1024² on CUDA, 256 on CPU)")
    parser.add_argument("--nf4", action="store_true", help="bitsandbytes NF4 weights: steps and a switch, then stop")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    from diffusers import FluxPipeline

    from loraprompt import Patcher, read_adapter

    model = build(args, device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path_a, path_b, path_k = write_loras(model, args.rank, Path(tmp))
        if args.nf4:
            print(f"{to_nf4(model, device, dtype)} Linears quantized to NF4", flush=True)
        if args.per_step or args.steps_only or args.nf4:  # printed at once: the ratio does not depend on the block count
            args.tokens = args.tokens or (4096 if device.type == "cuda" else 256)
            print_steps(bench_steps(model, path_a, args, device, dtype), args)
            if args.nf4:
                bench_nf4_switch(model, path_a, path_b, args, device)
            if args.steps_only or args.nf4:
                return
        a, b, k = read_adapter(path_a), read_adapter(path_b), read_adapter(path_k)
        patcher = Patcher({"transformer": model})
        ours = {
            "first apply": _timed(lambda: patcher.sync([(a, 1, 1)]), device, args.repeat, lambda: patcher.restore(release=True)),
            "switch": _timed(lambda: (patcher.sync([(b, 1, 1)]), patcher.sync([(a, 1, 1)])), device, args.repeat),
            "switch (kohya, fused q/k/v)": _timed(lambda: (patcher.sync([(k, 1, 1)]), patcher.sync([(a, 1, 1)])), device, args.repeat),
            "restore": _timed(patcher.restore, device, args.repeat, lambda: patcher.sync([(a, 1, 1)])),
        }
        ours["switch"] /= 2
        ours["switch (kohya, fused q/k/v)"] /= 2
        # factor sets the switches had to make (not in the Patcher's factor cache): 0 when both sides fit
        made = {label: max(patcher.sync([(x, 1, 1)]).factors_built for x in (other, a))
                for label, other in (("switch", b), ("switch (kohya, fused q/k/v)", k))}
        cache_mb = patcher._deltas.nbytes / 2**20
        patcher.restore(release=True)

        def load(path: Path, name: str) -> None:
            if getattr(model, "peft_config", None):  # one LoRA at a time, as ours (restore's setup follows a switch)
                unload()
            state, alphas = FluxPipeline.lora_state_dict(str(path), return_alphas=True)
            FluxPipeline.load_lora_into_transformer(state, network_alphas=alphas, transformer=model, adapter_name=name)
            model.fuse_lora(lora_scale=1.0, adapter_names=[name])

        def unload() -> None:
            model.unfuse_lora()
            model.unload_lora()

        peer = {
            "first apply": _timed(lambda: load(path_a, "a"), device, args.repeat, lambda: getattr(model, "peft_config", None) and unload()),
            "switch": _timed(lambda: (unload(), load(path_b, "b")), device, args.repeat),
            "restore": _timed(unload, device, args.repeat, lambda: load(path_a, "a")),
        }
        touched = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(TARGETS)
                   and not n.startswith("proj_out")]
        ups = [torch.zeros(w.shape[0], args.rank, dtype=dtype, device=device) for w in touched]
        downs = [torch.zeros(args.rank, w.shape[1], dtype=dtype, device=device) for w in touched]
        backups = [w.clone() for w in touched]
        limit = {
            "first apply": _timed(lambda: [w.addmm_(u, d) for w, u, d in zip(touched, ups, downs)], device, args.repeat),
            "switch": _timed(lambda: [torch.addmm(c, u, d, out=w) for w, c, u, d in zip(touched, backups, ups, downs)], device, args.repeat),
            "restore": _timed(lambda: [w.copy_(c) for w, c in zip(touched, backups)], device, args.repeat),
        }
    params = sum(p.numel() for p in model.parameters())
    print(f"Flux transformer {args.double} double + {args.single} single blocks, width {args.width}, "
          f"{params / 1e9:.2f} B params, {args.dtype} on {device}; rank {args.rank}, {len(touched)} weights")
    print(f"{'operation':30} {'loraprompt':>11} {'diffusers+peft':>15} {'limit':>9} {'vs peft':>8} {'vs limit':>9}")
    for op, t in ours.items():
        base = op if op in peer else "switch"
        print(f"{op:30} {t * 1e3:9.1f}ms {peer[base] * 1e3:13.1f}ms {limit[base] * 1e3:7.1f}ms "
              f"{peer[base] / t:7.2f}x {limit[base] / t:8.2f}x")
    print(f"factor sets made per switch (not in the {cache_mb:.0f} MB factor cache): "
          + ", ".join(f"{op} {n}" for op, n in made.items()))


if __name__ == "__main__":
    main()
