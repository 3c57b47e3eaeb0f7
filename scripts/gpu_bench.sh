#!/usr/bin/env bash
# The GPU benchmark and checks of docs/gpu.md, run on a lent device machine (JAX, no TensorFlow, no network) from
# the project's root, with the wheels of `../shared/gpu/prepare.sh hydra-core==1.3.2 omegaconf==2.3.0` (+ the
# antlr4 wheel built here) in .whl/. Writes $OUT/log and, by part, $OUT/bench-sd_v1-512.json, $OUT/tiny-gpu.tar,
# $OUT/profile-sd_v1-512-b8.json + trace-train-b8.json.gz, $OUT/xla-flags-*.json;
# `python scripts/gpu_check.py <that tar>` compares the tiny model's GPU results with this machine's CPU.
# `bash scripts/gpu_bench.sh [all|speed|correctness|profile|xla-flags]` (all: speed and correctness). RUNS="a b" picks the
# correctness part's runs (default: a b highest).
set -euo pipefail
PART=${1:-all}
case $PART in all | speed | correctness | profile | xla-flags) ;; *) echo "unknown part: $PART" >&2; exit 2 ;; esac
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/log"
# Speed: the project's own train step (finetune.training.build.build_tuner: text encoder + UNet + AdamW on the
# vectors), SD v1 shapes with random weights, 512 px, frozen weights in bfloat16; batch 1 and 8 with one model
# build; then sampling: 50 DDIM steps, guidance 7.5, batch 1.
# FLOPs: counted on a CPU for this config (docs/gpu.md); counting here would compile every program again.
SD=${SD:-"model=sd_v1_random data.resolution=512 model.precision=mixed_bfloat16 model.frozen_dtype=bfloat16"}
FLOPS=${FLOPS:-"--flops-from docs/benchmarks/flops-sd_v1-512-jax.json"}
if [ "$PART" = all ] || [ "$PART" = speed ]; then
    python3 scripts/benchmark.py $SD --batch-sizes 1,8 --steps 20 --warmup 2 --sample-steps 50 --guidance 7.5 $FLOPS \
        --matmul-size 8192 --matmul-repeats 10 --out "$OUT/bench-sd_v1-512.json" 2>&1 | tee -a "$OUT/log"
fi
# Profile: where the batch-8 step's time goes (20 timed steps, then 5 under JAX's profiler): GPU time per
# op category, XLA op and kernel; the Perfetto trace comes back for reading.
if [ "$PART" = profile ]; then
    python3 scripts/benchmark.py $SD --batch-sizes 8 --steps 20 --warmup 2 --no-sampling --profile \
        --profile-dir /tmp/profile $FLOPS --matmul-size 8192 --matmul-repeats 10 \
        --out "$OUT/profile-sd_v1-512-b8.json" 2>&1 | tee -a "$OUT/log"
    cp /tmp/profile/train/plugins/profile/*/perfetto_trace.json.gz "$OUT/trace-train-b8.json.gz"
    exit 0
fi
# XLA flags: the batch-8 step timed as in Speed with XLA's defaults and with each ';'-separated set of flags in
# $VARIANTS (e.g. VARIANTS="--xla_gpu_enable_command_buffer=+CONVOLUTION"), one process each, on one machine;
# the last variant also under the profiler.
if [ "$PART" = xla-flags ]; then
    IFS=';' read -ra sets <<< "${VARIANTS:?set VARIANTS}"
    for i in default "${!sets[@]}"; do
        flags=$([ "$i" = default ] && echo "" || echo "${sets[$i]}")
        profile=$([ "$i" = "$((${#sets[@]} - 1))" ] && echo "--profile --profile-dir /tmp/profile-$i" || echo "")
        echo "== XLA_FLAGS: ${flags:-(defaults)}" | tee -a "$OUT/log"
        all=$(echo ${XLA_FLAGS:-} $flags)  # XLA reads a value that does not start with "--" as a file name
        env ${all:+XLA_FLAGS="$all"} python3 scripts/benchmark.py $SD --batch-sizes 8 --steps 20 --warmup 2 \
            --no-sampling $profile $FLOPS --matmul-size ${MATMUL:-8192} --matmul-repeats 3 \
            --out "$OUT/xla-flags-$i.json" 2>&1 | grep -E "^  |rror" | tee -a "$OUT/log" || echo "== failed" | tee -a "$OUT/log"
    done
    exit 0
fi
# Correctness: the tiny model's first step (loss, gradient) and a 25-step render (tests/backend_runs.py, which
# sets XLA's deterministic GPU ops as a training run does), twice as the run does it, and once with float32
# matmuls at full precision (JAX's default on a GPU is TF32).
[ "$PART" = speed ] && exit 0
mkdir -p /tmp/tiny
for run in ${RUNS:-a b highest}; do  # the determinism pair first
    precision=$([ $run = highest ] && echo highest || echo default) start=$SECONDS
    JAX_DEFAULT_MATMUL_PRECISION=$precision python3 tests/backend_runs.py /tmp/tiny/$run --no-tensorflow \
        > /tmp/tiny/$run.log 2>&1 || { tail -20 /tmp/tiny/$run.log | tee -a "$OUT/log"; exit 1; }
    echo "tiny $run ($precision matmul precision, $((SECONDS - start)) s): $(cat /tmp/tiny/$run/result.json | tr -d '\n ')" | tee -a "$OUT/log"
    tar -C /tmp/tiny -cf "$OUT/tiny-gpu.tar" .  # after each run: what finished comes back even at a time limit
done
echo "done" | tee -a "$OUT/log"
