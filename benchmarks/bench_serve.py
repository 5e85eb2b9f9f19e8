"""Serving throughput and latency on the demo model for a mixed LoRA workload: 20 LoRAs whose
popularity follows Zipf's law, requests sent by concurrent clients, each request one image with
one LoRA. Three ways to serve it, measured in the same run on the same request sequence:

- "single process": `loraprompt serve`'s model queue (one model, one worker, one torch thread:
  the analogue of one GPU);
- "Ray multiplexed": `loraprompt serve --ray` with N replicas, routed by LoRA set (Ray Serve's
  model multiplexing: a set goes to a replica that already has it read and patched in);
- "Ray random": the same replicas with Ray Serve's default routing (power of two choices).

Each replica has one torch thread too, so the Ray rows use N times the compute of the single
process: "vs single" is the scale-out gain, and "multiplexed vs random" the routing's.

Jobs enter through the same backends the HTTP routes use (`LocalBackend`, `RayBackend`), so HTTP
parsing is left out. The LoRA switches column counts, per replica, how often a request needed a
different set than the replica's previous one (a restore plus an apply in the patcher).

    PYTHONPATH=. python benchmarks/bench_serve.py [--requests 60] [--clients 4] [--replicas 2]
        [--steps 4] [--size 64] [--zipf 1.1]

Needs `ray[serve]`. A short run (defaults) takes about 2-3 minutes on 2 cores, most of it Ray
starting and the replicas building the model.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loraprompt.serve.jobs import ImageTask, Job
from loraprompt.ui.txt2img import Txt2ImgRequest


def write_loras(pipe: Any, folder: Path, count: int) -> list[str]:
    """`count` kohya LoRAs for the demo model (small strengths: the demo's random weights blow up)."""
    from safetensors.torch import save_file

    from loraprompt.models.demo_loras import DemoLora, lora_metadata, lora_state_dict

    names = []
    for i in range(count):
        spec = DemoLora(f"style_{i:02d}.safetensors", 100 + i, 0.25, 0.1, (0, 0, 0), "", "", 1.0, (f"style{i}",))
        save_file(lora_state_dict(pipe, spec), str(folder / spec.relpath), metadata=lora_metadata(spec))
        names.append(Path(spec.relpath).stem)
    return names


def workload(names: list[str], requests: int, *, zipf: float, steps: int, size: int, seed: int = 0) -> list[ImageTask]:
    """`requests` one-image tasks, each with one LoRA drawn with Zipf popularity."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(names) + 1) ** zipf
    picks = rng.choice(len(names), size=requests, p=weights / weights.sum())
    return [ImageTask(Txt2ImgRequest(f"a picture <lora:{names[k]}:0.6>", steps=steps, seed=1000 + i, width=size,
                                     height=size, sampler="Euler")) for i, k in enumerate(picks)]


def measure(submit: Callable[[Job], Job], tasks: list[ImageTask], clients: int) -> dict[str, Any]:
    """Send `tasks` from `clients` threads (each waits for its answer before the next)."""
    todo: queue.Queue[ImageTask] = queue.Queue()
    for t in tasks:
        todo.put(t)
    latencies: list[float] = []
    failures: list[str] = []
    replicas: list[tuple[str | None, str]] = []

    def client() -> None:
        while True:
            try:
                task = todo.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            job = submit(Job([task]))
            job.wait()
            latencies.append(time.perf_counter() - start)
            if job.status != "succeeded":
                failures.append(job.error or job.status)
            else:
                replicas.append((job.images[0].replica, task.request.prompt))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    last: dict[str | None, str] = {}
    switches = 0
    for replica, prompt in replicas:  # completion order per replica approximates its run order
        switches += last.get(replica) != prompt
        last[replica] = prompt
    ordered = sorted(latencies)
    return {"throughput": len(tasks) / wall, "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "switches": switches,
            "failures": failures, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--loras", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--zipf", type=float, default=1.1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from loraprompt.models.demo import build_demo_pipeline
    from loraprompt.serve.cli import ServeConfig
    from loraprompt.serve.service import LocalBackend

    root = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    lora_dir = root / "loras"
    lora_dir.mkdir()
    names = write_loras(build_demo_pipeline(), lora_dir, args.loras)
    tasks = workload(names, args.requests, zipf=args.zipf, steps=args.steps, size=args.size)
    counts = np.bincount([names.index(t.prompt.split(":")[1]) for t in tasks], minlength=len(names))
    print(f"{args.requests} requests, {args.clients} clients, {args.loras} LoRAs (Zipf {args.zipf}: top 3 get "
          f"{counts[np.argsort(-counts)[:3]].sum() / len(tasks):.0%}), {args.steps} steps at {args.size}x{args.size}")
    config = ServeConfig(lora_dirs=[str(lora_dir)], data_dir=str(root / "data"), outputs=str(root / "outputs"))
    results: dict[str, dict[str, Any]] = {}

    torch.set_num_threads(1)
    engine = config.load_engine()
    local = LocalBackend(engine)
    measure(local.submit, tasks[:3], 1)  # warm-up
    results["single process"] = measure(local.submit, tasks, args.clients)
    local.close()
    del engine, local

    import ray
    from ray import serve

    from loraprompt.serve.ray_app import NO_LORA, RayBackend, build_application

    env = {"OMP_NUM_THREADS": "1", "LORAPROMPT_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    ray.init(num_cpus=args.replicas, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env})
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(config, replicas=args.replicas, cpus_per_replica=0.9, sets_per_replica=4, env=env),
                  name="loraprompt", route_prefix="/")
        handle = serve.get_deployment_handle("ModelReplica", app_name="loraprompt")
        for routing in ("multiplexed", "random"):
            backend = RayBackend(handle, routing)
            for _ in range(args.replicas * 2):  # warm-up every replica
                handle.options(multiplexed_model_id=NO_LORA).generate.remote([tasks[0]], "warm").result()
            results[f"Ray {routing}"] = measure(backend.submit, tasks, args.clients)
    finally:
        serve.shutdown()
        ray.shutdown()

    base = results["single process"]
    print(f"{'':18} {'images/s':>9} {'p50 s':>7} {'p95 s':>7} {'switches':>9} {'vs single':>10}")
    for name, r in results.items():
        print(f"{name:18} {r['throughput']:9.2f} {r['p50']:7.3f} {r['p95']:7.3f} {r['switches']:9d} "
              f"{r['throughput'] / base['throughput']:9.2f}x" + (f"  {len(r['failures'])} failed" if r["failures"] else ""))
    mux, rnd = results["Ray multiplexed"], results["Ray random"]
    print(f"Ray multiplexed vs random: {mux['throughput'] / rnd['throughput']:.2f}x throughput, "
          f"p95 {mux['p95'] / rnd['p95']:.2f}x, LoRA switches {mux['switches']} vs {rnd['switches']}")


if __name__ == "__main__":
    main()
