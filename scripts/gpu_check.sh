#!/usr/bin/env bash
# The one prepared GPU run: checks and times the CUDA build on a GPU machine and prints the table
# of docs/gpu.md. Builds nothing.
#
# Needs, from the repo root on the GPU machine:
#   - target/cuda-bundle, made by scripts/build_cuda.sh on any machine and carried over;
#   - the NVIDIA driver (nvidia-smi, libcuda.so.1) and CUDA 13 cuBLAS/NVRTC libraries, e.g.
#     PyTorch's nvidia-* wheels (found through `python3 -c 'import nvidia'` or BERTLINE_CUDA_LIBS);
#   - torch + transformers for the device row and the PyTorch rows (skipped when not importable).
#
# Runs, each under its own timeout (they add up to 460 s, inside the 8 minutes of a GPU check):
#   1. scripts/gpu_matmul_peak.py: device name, measured bf16 matmul TFLOP/s, datasheet peak;
#   2. cuda_kernels --ignored: bertline's CUDA kernels against their CPU references;
#   3. gpu_step gpu_one_step_matches_cpu_with_dropout: one step, same weights/batch/masks,
#      GPU vs CPU, f32 (bf16: owed, no bf16 step yet);
#   4. 300 steps bf16 vs f32: owed (no bf16 step yet);
#   5. gpu_step gpu_throughput: BERT-Tiny 256x128, BERT-mini 32x128, BERT-Base 128x128, f32
#      (bf16 rows owed);
#   6. scripts/bench_pretrain_torch.py --device cuda: the same three, eager f32 and autocast bf16;
# then scripts/gpu_table.py prints one table. Raw JSON lines: $OUT/gpu_check.jsonl (or ./).
#
# Usage: scripts/gpu_check.sh   Env: BERTLINE_BENCH_STEPS=10
set -uo pipefail

results=${OUT:-.}/gpu_check.jsonl
: >"$results"
steps=${BERTLINE_BENCH_STEPS:-10}
export BERTLINE_BENCH_STEPS=$steps

say() { echo "gpu_check: $*" >&2; }
owed() { echo "{\"check\": \"$1\", $2\"owed\": \"$3\"}" >>"$results"; }

# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 1
torch_ok=0
if (unset LD_PRELOAD; python3 -c 'import torch, transformers; assert torch.cuda.is_available()') 2>/dev/null; then
    torch_ok=1
fi

if [ "$torch_ok" = 1 ]; then
    (unset LD_PRELOAD; run_json device 30 python3 scripts/gpu_matmul_peak.py)
else
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    echo "{\"check\": \"device\", \"name\": \"$name\", \"bf16_tflops\": null, \"datasheet_bf16_tflops\": null}" >>"$results"
fi

# The kernel tests print no JSON: count libtest's verdict.
say "cuda_kernels"
log=$(mktemp)
timeout 45 "$bundle/bin/cuda_kernels" --ignored --test-threads 1 >"$log" 2>&1
status=$?
tail -15 "$log" >&2
passed=$(grep -oE '[0-9]+ passed' "$log" | tail -1 | cut -d' ' -f1)
failed=$(grep -oE '[0-9]+ failed' "$log" | tail -1 | cut -d' ' -f1)
if [ -n "$passed" ]; then
    echo "{\"check\": \"cuda_kernels\", \"tests_passed\": $passed, \"tests_failed\": ${failed:-0}}" >>"$results"
else
    echo "{\"check\": \"cuda_kernels\", \"failed\": $status}" >>"$results"
fi
rm -f "$log"

run_json one_step 60 \
    "$bundle/bin/gpu_step" --ignored --exact gpu_one_step_matches_cpu_with_dropout --nocapture --test-threads 1 ||
    sed -i 's/"check": "one_step", "failed"/"check": "one_step", "precision": "f32", "failed"/' "$results"
owed one_step '"precision": "bf16", ' 'pretrain.precision = bf16 has no GPU step yet'
owed curves '' 'needs the bf16 step'

run_json throughput 120 \
    "$bundle/bin/gpu_step" --ignored --exact gpu_throughput --nocapture --test-threads 1 ||
    sed -i 's/"check": "throughput", "failed"/"check": "throughput", "impl": "bertline", "model": "all", "precision": "f32", "failed"/' "$results"
for size in tiny mini base; do
    owed throughput "\"impl\": \"bertline\", \"model\": \"$size\", \"precision\": \"bf16\", " 'no bf16 step yet'
done

unset LD_PRELOAD
if [ "$torch_ok" = 1 ]; then
    for run in "tiny 256" "mini 32" "base 128"; do
        set -- $run
        for dtype in f32 bf16; do
            run_json "torch_$1_$dtype" 35 python3 scripts/bench_pretrain_torch.py \
                --device cuda --size "$1" --dtype "$dtype" --batch "$2" --steps "$steps" --skip-forward
        done
    done
else
    say "torch + transformers with CUDA not importable: PyTorch rows skipped"
fi

python3 scripts/gpu_table.py "$results"
