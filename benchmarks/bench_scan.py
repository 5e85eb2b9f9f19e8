"""Library scan times for 1,000 and 10,000 LoRA files, cold (no cache) and warm (cache from the
previous run), against peers measured in the same run:

- "safe_open walk": os.walk + `safetensors.safe_open(...).metadata()` per file (no cache).
- "A1111": Automatic1111 v1.10's way (walk, natural sort, `read_metadata_from_safetensors` with
  values starting `{` parsed, metadata and hash looked up in `diskcache` under `lora/<stem>` and
  validated by mtime); cold with an empty diskcache, warm with the one the cold run filled.

Files have realistic headers (kohya key names, `ss_*` metadata with tag frequencies) and tiny
tensors. "Cold" means no application cache; the OS page cache is warm for everyone.

    PYTHONPATH=. python benchmarks/bench_scan.py [--sizes 1000 10000] [--tensors 200] [--repeat 3]
    PYTHONPATH=. python benchmarks/bench_scan.py --sizes 100000 --repeat 1 --keep /tmp/lp-bench --peers a1111

The A1111 peer needs `diskcache` (A1111 pins 5.6.3): pip install diskcache==5.6.3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from loraprompt.library import Library


def make_files(root: Path, count: int, tensors: int) -> None:
    """`count` kohya-style LoRA files in folders of 100, each with `tensors` tiny tensors."""
    base = {}
    for i in range(tensors // 3):
        stem = f"lora_unet_down_blocks_{i % 4}_attentions_{i % 2}_transformer_blocks_0_attn{i % 2 + 1}_to_q_{i}"
        base[f"{stem}.lora_down.weight"] = np.zeros((1, 4), dtype=np.float16)
        base[f"{stem}.lora_up.weight"] = np.zeros((4, 1), dtype=np.float16)
        base[f"{stem}.alpha"] = np.ones((), dtype=np.float16)
    tags = json.dumps({"10_subject": {f"tag number {t}": 100 - t for t in range(60)}})
    for i in range(count):
        folder = root / f"folder{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"ss_output_name": f"lora_{i}", "ss_base_model_version": "sd_v1", "ss_network_dim": "16",
                "ss_network_alpha": "8", "ss_tag_frequency": tags, "ss_sd_model_name": "v1-5-pruned.safetensors",
                "ss_resolution": "(512, 512)", "ss_num_epochs": "10", "ss_bucket_info": json.dumps({"buckets": {}})}
        (folder / f"lora_{i}.safetensors").write_bytes(save(base, metadata=meta))


def _natural(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _walk(root: Path) -> list[str]:
    files = []
    for dirpath, _, names in os.walk(root, followlinks=True):
        files += [os.path.join(dirpath, n) for n in names if n.lower().endswith((".safetensors", ".pt", ".ckpt"))]
    return sorted(files, key=_natural)


def peer_safe_open(root: Path) -> int:
    """os.walk + safe_open metadata, the plain way."""
    n = 0
    for path in _walk(root):
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
        n += bool(meta.get("ss_output_name"))
    return n


def _a1111_read_metadata(filename: str) -> dict[str, object]:
    with open(filename, mode="rb") as file:
        metadata_len = int.from_bytes(file.read(8), "little")
        json_start = file.read(2)
        assert metadata_len > 2 and json_start in (b'{"', b"{'")
        json_obj = json.loads(json_start + file.read(metadata_len - 2))
    res: dict[str, object] = {}
    for k, v in json_obj.get("__metadata__", {}).items():
        res[k] = v
        if isinstance(v, str) and v[0:1] == "{":
            try:
                res[k] = json.loads(v)
            except ValueError:
                pass
    return res


def peer_a1111(root: Path, cache_dir: Path) -> int:
    """A1111 v1.10's list_available_networks with its diskcache-backed metadata and hash caches."""
    import diskcache

    meta_cache = diskcache.Cache(str(cache_dir / "safetensors-metadata"), size_limit=2**32, disk_min_file_size=2**18)
    hash_cache = diskcache.Cache(str(cache_dir / "hashes-addnet"), size_limit=2**32, disk_min_file_size=2**18)
    n = 0
    for filename in _walk(root):
        if os.path.isdir(filename):
            continue
        name = os.path.splitext(os.path.basename(filename))[0]
        title = "lora/" + name
        ondisk_mtime = os.path.getmtime(filename)
        entry = meta_cache.get(title)
        if not entry or ondisk_mtime > entry.get("mtime", 0) or "value" not in entry:
            entry = {"mtime": ondisk_mtime, "value": _a1111_read_metadata(filename)}
            meta_cache[title] = entry
        metadata = entry["value"]
        hash_cache.get(title)
        n += bool(metadata.get("ss_output_name", name))
    meta_cache.close()
    hash_cache.close()
    return n


def ours(root: Path, cache_dir: Path, workers: int | None = None) -> int:
    """loraprompt.Library: build the catalog (entries with family, summary, previews, sidecars);
    `workers` None: a cold scan of thousands of files reads headers on every CPU, 0: in one process."""
    lib = Library([root], cache_dir=cache_dir, workers=workers)
    return sum(bool(e.alias) for e in lib.entries)


def timed(fn: Callable[[int], int], expect: int, repeat: int) -> float:
    """Best of `repeat` runs of fn(run_index) (shared machines are noisy: the minimum is the
    least disturbed run)."""
    best = float("inf")
    for i in range(repeat):
        start = time.perf_counter()
        got = fn(i)
        best = min(best, time.perf_counter() - start)
        assert got == expect, f"{fn} found {got} files, expected {expect}"
    return best


def library_memory(root: Path, cache_dir: Path) -> tuple[float, float]:
    """(MiB the Library's objects hold once built, MiB the process grew by) for a warm scan, measured
    in a fresh interpreter: tracemalloc's count of live allocations, and resident memory."""
    code = (
        "import gc, os, sys, tracemalloc; from loraprompt.library import Library\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "gc.collect(); before = rss(); lib = Library([sys.argv[1]], cache_dir=sys.argv[2]); gc.collect(); grew = rss() - before\n"
        "tracemalloc.start(); lib = Library([sys.argv[1]], cache_dir=sys.argv[2]); gc.collect()\n"
        "print(tracemalloc.get_traced_memory()[0], grew)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root), str(cache_dir)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    held, grew = (int(x) for x in out.stdout.split())
    return held / 2**20, grew / 2**20


def run_size(count: int, tensors: int, repeat: int, keep: Path | None = None, walk_peer: bool = True) -> None:
    """Measure and print every scanner at one library size, in a temporary folder (the files in
    `keep`/<count> are made once and reused: 100,000 files take minutes to write)."""
    work = Path(tempfile.mkdtemp(prefix="bench_scan_"))
    try:
        root = keep / f"{count}-{tensors}" if keep else work / "Lora"
        done = root.with_name(root.name + ".complete")
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            make_files(root, count, tensors)
            if keep:
                done.write_text("made by bench_scan.py\n")
        size_mb = sum(p.stat().st_size for p in root.rglob("*.safetensors")) / 1e6
        print(f"\n== {count} files ({size_mb:.0f} MB, {tensors} tensors each; best of {repeat} warm runs)")
        cold_runs = max(1, min(repeat, 3000 // count))
        plain = timed(lambda i: peer_safe_open(root), count, cold_runs) if walk_peer else float("nan")
        a_cold = timed(lambda i: peer_a1111(root, work / f"a1111-{i}"), count, cold_runs)
        a_warm = timed(lambda i: peer_a1111(root, work / "a1111-0"), count, repeat)
        o_cold = timed(lambda i: ours(root, work / f"ours-{i}"), count, cold_runs)
        o_cold1 = timed(lambda i: ours(root, work / f"ours-one-{i}", workers=0), count, cold_runs)
        o_warm = timed(lambda i: ours(root, work / "ours-0"), count, repeat)
        print(f"safe_open walk (no cache) {plain:8.3f} s")
        print(f"A1111 cold                {a_cold:8.3f} s")
        print(f"A1111 warm (diskcache)    {a_warm:8.3f} s")
        print(f"loraprompt cold           {o_cold:8.3f} s   {plain / o_cold:5.2f}x vs safe_open walk, {a_cold / o_cold:5.2f}x vs A1111 cold")
        print(f"loraprompt cold, 1 process{o_cold1:8.3f} s   {a_cold / o_cold1:5.2f}x vs A1111 cold (default: workers on {os.cpu_count()} CPUs)")
        print(f"loraprompt warm           {o_warm:8.3f} s   {a_warm / o_warm:5.2f}x vs A1111 warm, {plain / o_warm:5.1f}x vs safe_open walk")
        held, grew = library_memory(root, work / "ours-0")
        print(f"loraprompt memory         {held:8.0f} MiB held by the library's objects, process grew {grew:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--tensors", type=int, default=200, help="tensors per file (header size)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is kept)")
    parser.add_argument("--keep", type=Path, help="make the files once in this folder and reuse them (for 100000)")
    parser.add_argument("--peers", choices=("all", "a1111"), default="all",
                        help="a1111: leave out the slow safe_open walk (at 100,000 files it takes minutes)")
    args = parser.parse_args()
    if importlib.util.find_spec("diskcache") is None:
        raise SystemExit("bench_scan: the A1111 peer needs diskcache (A1111 pins 5.6.3): pip install diskcache==5.6.3")
    print("ratios above 1 mean loraprompt is faster than that peer")
    for count in args.sizes:
        run_size(count, args.tensors, args.repeat, args.keep, args.peers == "all")


if __name__ == "__main__":
    main()
