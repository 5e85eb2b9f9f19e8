#!/usr/bin/env bash
# The engine on a GPU, in one run: the CUDA tests, then bench_patch for SD1.5 and SDXL (fp16),
# backups on the device and in pinned host memory, against diffusers + peft and the limit, plus the
# per-step cost of a scheduled LoRA, then bench_dit at Flux.1-dev size (bf16) and a scheduled LoRA's
# cost per Flux step. Everything goes to $OUT (default ./gpu-results).
#
# The GPU machines have torch, transformers, safetensors, accelerate and peft but neither diffusers
# nor lark, and no network. Bring their wheels, on a machine with PyPI access, before the run:
#     benchmarks/gpu_run.sh --fetch-wheels        # pure-Python wheels into benchmarks/wheels/
# then run it on the GPU machine (with the device tool: carry benchmarks/wheels):
#     benchmarks/gpu_run.sh
# At most ~9.5 minutes on an H200 (every step has its own time limit; models are built on the GPU).
#     benchmarks/gpu_run.sh nf4                   # instead: bench_dit on bitsandbytes NF4 weights (~3 min)
# The NF4 run needs bitsandbytes' wheel (43 MB, in benchmarks/wheels with the others: 64 MiB carried
# in all), and a second device call: the main run fills one call's 600 s.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/wheels
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p "$WHEELS"
    PIP=${PIP:-/work/main/.venv/bin/pip}
    # --no-deps: only what the GPU image lacks; all pure Python, so any Python 3 / platform takes them
    "$PIP" download --no-deps --only-binary=:all: -d "$WHEELS" \
        diffusers==0.42.1 lark==1.3.1 importlib_metadata==8.7.0 zipp requests urllib3 certifi idna charset_normalizer
    # bitsandbytes ships its CUDA kernels in one py3-none manylinux wheel (for `gpu_run.sh nf4`)
    "$PIP" download --no-deps --only-binary=:all: --platform manylinux_2_24_x86_64 -d "$WHEELS" bitsandbytes==0.50.2
    ls -l "$WHEELS"
    exit 0
fi

OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
# only what is missing, without touching what the image has (torch, transformers, peft, ...)
MODULES="zipp importlib_metadata idna certifi urllib3 charset_normalizer requests lark diffusers"
[[ "${1:-}" == "nf4" ]] && MODULES="$MODULES bitsandbytes"
for module in $MODULES; do
    if ! "$PY" -c "import $module" 2>/dev/null; then
        "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "${module//_/-}" \
            || echo "# could not install $module from $WHEELS (run --fetch-wheels first)"
    fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch, diffusers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'diffusers', diffusers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
export PYTHONPATH=$PWD

if [[ "${1:-}" == "nf4" ]]; then
    echo "## bench_dit on NF4 weights: steps (plain, constant, scheduled, peft) and a switch, 4 double + 8 single blocks"
    timeout 200 "$PY" -m benchmarks.bench_dit --device cuda --double 4 --single 8 --nf4 --repeat 5 2>&1 \
        | grep -v -i "warn" | tee "$OUT/bench-dit-nf4.txt"
    echo "## bench_dit on NF4 weights at Flux.1-dev size (19 double + 38 single blocks)"
    timeout 300 "$PY" -m benchmarks.bench_dit --device cuda --double 19 --single 38 --nf4 --repeat 3 2>&1 \
        | grep -v -i "warn" | tee "$OUT/bench-dit-nf4-full.txt"
    echo "## done: $OUT"
    exit 0
fi

echo "## CUDA tests"
timeout 100 "$PY" -m pytest tests/patcher/test_cuda.py \
    tests/patcher/test_unfused.py::test_every_path_of_the_low_rank_forward_adds_the_merged_delta -k "not cpu" \
    -q -p no:cacheprovider 2>&1 | tail -25

run() {  # bench_patch with a time limit; its output goes to $OUT/bench-<name>.txt too
    local name=$1; shift
    echo "## bench_patch $*"
    timeout "$LIMIT" "$PY" -m benchmarks.bench_patch --device cuda --repeat 7 "$@" 2>&1 \
        | grep -v -i "warn" | tee "$OUT/bench-$name.txt"
}
# each step has its own limit, so one that hangs cannot eat the others' time (≈ 9.5 min in all)
LIMIT=120 run sd15-fp16 --model sd15 --dtype fp16 --profile
LIMIT=190 run sdxl-fp16 --model sdxl --dtype fp16 --repeat 5
echo "## bench_dit: Flux.1-dev size (19 double + 38 single blocks), bf16"
timeout 110 "$PY" -m benchmarks.bench_dit --device cuda --double 19 --single 38 2>&1 \
    | grep -v -i "warn" | tee "$OUT/bench-dit.txt"
echo "## bench_dit: a scheduled LoRA's cost per Flux step (4 double + 8 single blocks at width 3072, 1024²)"
timeout 50 "$PY" -m benchmarks.bench_dit --device cuda --double 4 --single 8 --steps-only --repeat 5 2>&1 \
    | grep -v -i "warn" | tee "$OUT/bench-dit-steps.txt"
echo "## done: $OUT"
