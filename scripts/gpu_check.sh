#!/usr/bin/env bash
# The one prepared GPU run: checks and times the CUDA build on a GPU machine. Builds nothing.
#
# Needs, from the repo root on the GPU machine:
#   - target/cuda-bundle, made by scripts/build_cuda.sh on any machine and carried over;
#   - the NVIDIA driver (nvidia-smi, libcuda.so.1) and CUDA 13 cuBLAS/NVRTC libraries, e.g.
#     PyTorch's nvidia-* wheels (found through `python3 -c 'import nvidia'` or BERTLINE_CUDA_LIBS);
#   - optionally torch + transformers for the PyTorch rows (skipped when not importable).
#
# Runs, each under its own timeout:
#   1. hf_parity cuda_one_step_matches_cpu: fixture logits, loss and loss after one AdamW step,
#      GPU vs CPU (within 1e-3) and vs HF;
#   2. hf_parity cuda_bert_base_throughput: BERT-Base seq 128 f32 training steps, tokens/s, MFU;
#   3. bertline-pretrain --bench (BERT-mini) on the GPU;
#   4. scripts/bench_pretrain_torch.py on cuda: mini f32, base f32 and f16 (autocast + GradScaler);
# then prints one table. Every raw JSON line is kept in $OUT/gpu_check.jsonl (or ./gpu_check.jsonl).
#
# Usage: scripts/gpu_check.sh   Env: BERTLINE_BENCH_BATCH=32 BERTLINE_BENCH_STEPS=10
# The timeouts add up to 550 s, inside one 600 s device command.
set -uo pipefail

bundle=${BERTLINE_CUDA_BUNDLE:-target/cuda-bundle}
results=${OUT:-.}/gpu_check.jsonl
: >"$results"
batch=${BERTLINE_BENCH_BATCH:-32}
steps=${BERTLINE_BENCH_STEPS:-10}
export BERTLINE_BENCH_BATCH=$batch BERTLINE_BENCH_STEPS=$steps

say() { echo "gpu_check: $*" >&2; }

[ -f "$bundle/paths.env" ] || { say "no $bundle/paths.env: run scripts/build_cuda.sh and carry $bundle"; exit 1; }
# shellcheck disable=SC1091
source "$bundle/paths.env"

# NVRTC reads headers from the absolute paths baked into the binary at build time.
install_baked_include_dirs() {
    mkdir -p "$CUDA_INCLUDE_DIR" "$DFDX_OUT_DIR"
    cp -r "$bundle"/include/. "$CUDA_INCLUDE_DIR"/
    cp "$bundle"/dfdx-out/*.cuh "$DFDX_OUT_DIR"/
}

# Directory holding libcublas.so.13 and libnvrtc.so.13 (PyTorch's wheels put them together).
find_cuda_libs() {
    if [ -n "${BERTLINE_CUDA_LIBS:-}" ]; then echo "$BERTLINE_CUDA_LIBS"; return; fi
    python3 - <<'PY' 2>/dev/null && return
import glob, os, nvidia
for root in nvidia.__path__:
    hits = glob.glob(os.path.join(root, "**", "libcublas.so.13"), recursive=True)
    if hits:
        print(os.path.dirname(hits[0]))
        break
else:
    raise SystemExit(1)
PY
    dirname "$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)"
}

# The driver's CUDA version (13.0 for driver 580) -> the newest PTX ISA it accepts (9.0).
driver_ptx_isa() {
    local version
    version=$(nvidia-smi | grep -oE 'CUDA Version: [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+')
    case "$version" in
        13.*) echo "9.${version#13.}" ;;
        *) echo "" ;;
    esac
}

run_json() { # name timeout command...: keeps the JSON lines the command prints
    local name=$1 limit=$2
    shift 2
    say "$name"
    local log
    log=$(mktemp)
    timeout "$limit" "$@" >"$log" 2>&1
    local status=$?
    # libtest prints "test NAME ... " before a test's own output, so match anywhere in the line.
    grep -oE '\{".*\}' "$log" >>"$results"
    if [ "$status" -ne 0 ]; then
        say "$name failed (exit $status); last lines:"
        tail -20 "$log" >&2
        echo "{\"check\": \"$name\", \"failed\": $status}" >>"$results"
    fi
    rm -f "$log"
}

nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv >&2
install_baked_include_dirs
libs=$(find_cuda_libs)
[ -f "$libs/libcublas.so.13" ] || { say "no libcublas.so.13 found: set BERTLINE_CUDA_LIBS"; exit 1; }
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BERTLINE_PTX_ISA=$(driver_ptx_isa)
export BERTLINE_PTX_ISA
export LD_PRELOAD="$PWD/$bundle/lib/libptx_isa_compat.so"
say "CUDA libs: $libs; PTX ISA capped at ${BERTLINE_PTX_ISA:-none}; sm_$CUDA_COMPUTE_CAP kernels"
ldd "$bundle/bin/hf_parity" | grep -E 'cuda|cublas|nvrtc' >&2

run_json cuda_one_step_matches_cpu 100 \
    "$bundle/bin/hf_parity" --ignored --exact cuda_one_step_matches_cpu --nocapture --test-threads 1
run_json cuda_bert_base_throughput 150 \
    "$bundle/bin/hf_parity" --ignored --exact cuda_bert_base_throughput --nocapture --test-threads 1

# The stage binary's own benchmark (BERT-mini, batch 32, seq 128) on the GPU, as one JSON line.
compact_bench_json='import json, sys; d = json.load(sys.stdin); d["check"] = "bertline_pretrain_bench_mini"; print(json.dumps(d))'
run_json bertline_pretrain_bench_mini 60 bash -c \
    '"$0" --bench --bench-steps "$1" | python3 -c "$2"' "$bundle/bin/bertline-pretrain" "$steps" "$compact_bench_json"

unset LD_PRELOAD
if python3 -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
    run_json torch_mini_f32 80 python3 scripts/bench_pretrain_torch.py \
        --device cuda --size mini --dtype f32 --steps "$steps" --skip-forward
    for dtype in f32 f16; do
        run_json "torch_base_$dtype" 80 python3 scripts/bench_pretrain_torch.py \
            --device cuda --size base --dtype "$dtype" --batch "$batch" --steps "$steps" --skip-forward
    done
else
    say "torch + transformers with CUDA not importable: PyTorch rows skipped"
fi

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'run':38} result")
for r in rows:
    name = r.get("check") or f"pytorch {r['model']['size']} {r['dtype']} batch {r['batch']}"
    if "failed" in r:
        text = f"FAILED (exit {r['failed']})"
    elif name == "cuda_one_step_matches_cpu":
        after = r["loss_after_one_step"]
        text = (f"logits |gpu-cpu| {r['logits_max_abs_diff_vs_cpu']:.1e}, loss after step "
                f"gpu {after['gpu']:.5f} cpu {after['cpu']:.5f} hf {after['hf']:.5f}")
    elif name == "bertline_pretrain_bench_mini":
        text = (f"bertline mini f32 batch {r['batch']}: {r['median_step_s']*1e3:.0f} ms/step, "
                f"{r['tokens_per_s']:.0f} tok/s")
    elif name == "cuda_bert_base_throughput":
        text = (f"bertline f32 batch {r['batch']}: {r['step_s_median']*1e3:.0f} ms/step, "
                f"{r['tokens_per_s']:.0f} tok/s, MFU {100*r['mfu_vs_fp32_peak_67tflops']:.1f}% of FP32")
    else:
        t = r["train_step"]
        text = (f"{t['median_s']*1e3:.0f} ms/step, {t['tokens_per_s']:.0f} tok/s, "
                f"MFU {100*t['mfu']:.1f}% of {t['peak_tflops_assumed']:.0f} TF")
    print(f"{name:38} {text}")
PY
