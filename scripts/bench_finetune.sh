#!/usr/bin/env bash
# `just bench-finetune`: fine-tuning (train step) and inference examples/s of
# BertForSequenceClassification, bertline vs PyTorch (HF), same config, 2 threads.
# The PyTorch side needs torch + transformers (scripts/requirements-parity.txt, in .venv or
# on python3's path); without them only bertline's numbers are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${BENCH_THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
echo "== bertline (dfdx, $threads threads)" >&2
cargo test --release --quiet --test finetune_bench -- --ignored --nocapture 2>/dev/null | grep '^{'
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
if "$python" -c "import torch, transformers" 2>/dev/null; then
    echo "== PyTorch ($threads threads)" >&2
    "$python" scripts/bench_finetune_torch.py --threads "$threads"
else
    echo "PyTorch baseline skipped: torch/transformers not importable by $python (see scripts/requirements-parity.txt)" >&2
fi
