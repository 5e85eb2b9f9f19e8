"""Training speed and peak memory: `loraprompt.train` against a minimal diffusers + peft loop (the
peer, as in diffusers' train_text_to_image_lora.py), at SD1.5 size (UNet + CLIP-L built from the
shipped configs with random weights; 512², batch 1, rank 16, UNet and text-encoder LoRA).

Each side runs in its own fresh process (so peak memory is its own): one warm-up step, then
`--steps` timed steps over the same cached latents and caption. Peak memory is the process's
highest RSS from adding the LoRA to the last step on CPU, `torch.cuda.max_memory_allocated` on a GPU. Target on GPU: ours >= 1.0x the peer's
steps/s at <= its memory.

Run: flock /tmp/loraprompt-heavy.lock python -m benchmarks.bench_train [--device cpu|cuda] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RANK = 16
CAPTION = "a photo of <s1>"


def build_pipe(folder: Path) -> Any:
    """SD1.5-shaped pipeline with random weights, from loraprompt's shipped diffusers configs."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from loraprompt.models.checkpoint import family_config, write_config_dir

    configs = family_config("sd1")
    root = write_config_dir(configs, folder)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(configs["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        tokenizer=CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
        unet=UNet2DConditionModel.from_config(configs["unet"]),
        scheduler=DDPMScheduler.from_config(configs["scheduler"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    print(f"  (built the SD1.5-sized pipeline in {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return pipe


class _RssPeak:
    """The highest resident set size seen while training (sampled every 20 ms): the process's
    ru_maxrss would report the model's construction, the same for both sides."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * resource.getpagesize())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def _start_peak(device: str) -> _RssPeak | None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return None
    return _RssPeak()


def _peak(device: str, sampler: _RssPeak | None) -> float:
    if sampler is None:
        return torch.cuda.max_memory_allocated() / 2**20
    return sampler.stop()


def run_ours(folder: Path, device: str, steps: int, resolution: int) -> dict[str, float]:
    from PIL import Image

    from loraprompt.train import TrainConfig, Trainer
    from loraprompt.train.model import Base

    images = folder / "images"
    images.mkdir()
    Image.new("RGB", (resolution, resolution), (120, 80, 40)).save(images / "a.png")
    config = TrainConfig(images=str(images), output=str(folder / "out.safetensors"), steps=steps + 1, rank=RANK,
                         resolution=resolution, batch_size=1, device=device, caption_template=CAPTION)
    trainer = Trainer(config, base=Base(build_pipe(folder / "cfg"), "sd1", "sd15-random"))
    sampler = _start_peak(device)
    trainer._prepare()
    trainer.train_step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(device)
    return {"steps_per_s": steps / (time.perf_counter() - t0), "peak_mib": _peak(device, sampler)}


def run_peer(folder: Path, device: str, steps: int, resolution: int) -> dict[str, float]:
    """The minimal loop: peft adapters on the UNet's and the text encoder's attention, AdamW, MSE on epsilon."""
    import torch.nn.functional as F
    from peft import LoraConfig

    pipe = build_pipe(folder / "cfg")
    unet, te, vae = pipe.unet, pipe.text_encoder, pipe.vae
    sampler = _start_peak(device)
    for m in (unet, te, vae):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    te.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                              target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    unet.to(device)
    te.to(device)
    vae.to(device)
    params = [p for m in (unet, te) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    with torch.no_grad():
        pixels = torch.zeros(1, 3, resolution, resolution, device=device)
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
    ids = pipe.tokenizer([CAPTION], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
    sched = pipe.scheduler

    def step() -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,), device=device)
        states = te(ids)[0]
        pred = unet(sched.add_noise(latents, noise, t), t, states).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"steps_per_s": steps / (time.perf_counter() - t0), "peak_mib": _peak(device, sampler)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _child(which: str, settings: tuple[str, int, int, int], queue: Any) -> None:
    device, steps, resolution, threads = settings
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        fn = run_ours if which == "ours" else run_peer
        queue.put(fn(Path(tmp), device, steps, resolution))


def measure(which: str, device: str, steps: int, resolution: int, threads: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(which, (device, steps, resolution, threads), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return dict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side (after one warm-up)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = {}
    for which in ("peer", "ours"):
        results[which] = measure(which, args.device, args.steps, args.resolution, args.threads)
    ours, peer = results["ours"], results["peer"]
    ratios = {"speed": ours["steps_per_s"] / peer["steps_per_s"], "memory": ours["peak_mib"] / peer["peak_mib"]}
    if args.json:
        print(json.dumps({"args": vars(args), **results, "ratios": ratios}))
        return 0
    print(f"SD1.5 size, {args.resolution}², batch 1, rank {RANK}, UNet + TE LoRA, {args.device}, {args.steps} steps")
    for which in ("peer", "ours"):
        r = results[which]
        print(f"  {which:5s} {r['steps_per_s']:8.3f} steps/s   peak {r['peak_mib']:9.0f} MiB")
    print(f"  ours/peer: speed {ratios['speed']:.2f}x, memory {ratios['memory']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
