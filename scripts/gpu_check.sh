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

results=${OUT:-.}/gpu_check.jsonl
: >"$results"
batch=${BERTLINE_BENCH_BATCH:-32}
steps=${BERTLINE_BENCH_STEPS:-10}
export BERTLINE_BENCH_BATCH=$batch BERTLINE_BENCH_STEPS=$steps

say() { echo "gpu_check: $*" >&2; }

# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 1
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
