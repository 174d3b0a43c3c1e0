#!/usr/bin/env bash
# `just bench-pretrain`: one training step of BERT-mini (4 layers, hidden 256, 4 heads,
# intermediate 1024, vocab 8192, seq 128, batch 32) in bertline and in PyTorch (HF
# BertForPreTraining, same config, 2 threads), in the same invocation, as a table with the
# ratio. Installs torch + transformers into a virtualenv on first use (PyPI, ~3 GB).
#   BERTLINE_VENV=DIR   virtualenv to use or create (default .venv in the repo)
#   STEPS=N             timed steps per side (default 5)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${BERTLINE_VENV:-$repo/.venv}"
steps="${STEPS:-5}"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
    echo "installing torch + transformers into $venv (first run only)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --no-cache-dir -q -r scripts/requirements-parity.txt
fi
cargo build --release -p bertline-pretrain >&2
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
ours="$(MIMALLOC_ALLOW_THP=0 target/release/bertline-pretrain --bench --bench-steps "$steps")"
theirs="$("$venv/bin/python" scripts/bench_pretrain_torch.py --threads 2 --steps "$steps" --warmup 2)"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
t = theirs["train_step"]
rows = [
    ("bertline (dfdx, CPU)", ours["median_step_s"], ours["tokens_per_s"], ours["peak_rss_mib"]),
    ("PyTorch (HF BertForPreTraining)", t["median_s"], t["tokens_per_s"], t.get("peak_rss_mib", float("nan"))),
]
print("BERT-mini training step, batch 32 x seq 128, 2 threads")
print(f"{'':34} {'median step (s)':>16} {'tokens/s':>10} {'peak RSS (MiB)':>15}")
for name, s, tps, rss in rows:
    print(f"{name:34} {s:>16.3f} {tps:>10.0f} {rss:>15.0f}")
print(f"speed-up of bertline over PyTorch: {t['median_s'] / ours['median_step_s']:.2f}x")
PY
