#!/usr/bin/env bash
# The data stages (pairs + mask) against Google's create_pretraining_data.py, side by side in
# one invocation: the same 8 Wikipedia files (wikipedia_en/wiki_00..07), the same vocabulary
# (bertline's vocab stage on those files, built first and not timed), the same flags
# (max_seq_length 128, max_predictions_per_seq 20, masked_lm_prob 0.15, dupe_factor 5,
# short_seq_prob 0.1, random_seed 12345, lower case, no whole-word masking). Each side runs
# under /usr/bin/time -v (wall, user + sys CPU, peak RSS), bertline's 5 times (the median
# run reported, see below); then both outputs are read back with the same counting
# (scripts/bench_data.py) and one table is printed.
#
# Google's side is PyPI's bert-tensorflow 1.0.4, unmodified, run as
# `python -m bert.create_pretraining_data` from a virtual environment this script makes if
# it is missing (.venv-bench/, git-ignored: bert-tensorflow 1.0.4, tensorflow 2.21.0 (CPU),
# pyarrow to read bertline's shards back; about 2 GB, a minute or two to install). That
# release already imports `tensorflow.compat.v1 as tf`, so it runs on TensorFlow 2 as
# published. Nothing of Google's is stored in this repository.
#
# Target (issue #16): >= 100x Google's instances/s at < 200 MB peak RSS.
#
# Usage: scripts/bench_data.sh            (from anywhere; builds the release binaries)
#   BERTLINE_WIKI=DIR    folder holding wiki_00.txt..wiki_07.txt
#                        (default ../shared/datasets/pretrain/wikipedia_en from the repo)
#   BENCH_VENV=DIR       the virtual environment (default .venv-bench in the repo)
#   NO_BUILD=1           skip `cargo build`
#   RUNS=N               bertline's runs, the median reported (default 5)
#   KEEP=1               keep the temporary directory (both outputs, logs, timings)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
wiki="${BERTLINE_WIKI:-$repo/../shared/datasets/pretrain/wikipedia_en}"
[[ -d "$wiki" ]] || { echo "error: no folder $wiki; set BERTLINE_WIKI" >&2; exit 2; }
wiki="$(cd "$wiki" && pwd)"
files=("$wiki"/wiki_0[0-7].txt)
if [[ ${#files[@]} -ne 8 || ! -f "${files[0]}" ]]; then
    echo "error: $wiki does not hold wiki_00.txt..wiki_07.txt; set BERTLINE_WIKI" >&2
    exit 2
fi
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time is needed (apt-get install time)" >&2; exit 2; }

venv="${BENCH_VENV:-$repo/.venv-bench}"
py="$venv/bin/python"
if ! "$py" -c 'import bert.create_pretraining_data, tensorflow, pyarrow' 2>/dev/null; then
    echo "installing Google's generator into $venv (bert-tensorflow 1.0.4, tensorflow 2.21.0, pyarrow)..." >&2
    [[ -x $py ]] || python3 -m venv "$venv"
    "$py" -m pip install -q --disable-pip-version-check \
        bert-tensorflow==1.0.4 tensorflow==2.21.0 pyarrow >&2
fi

if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -p bertline-vocab -p bertline-pairs -p bertline-mask >&2
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
export MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0} # as the justfile exports it

tmp="$(mktemp -d)"
if [[ -n "${KEEP:-}" ]]; then echo "keeping $tmp" >&2; else trap 'rm -rf "$tmp"' EXIT; fi
seed=12345
config="$tmp/pipeline.toml"
cp pipeline.toml "$config"
cat >> "$config" <<EOF

[profiles.bench_data.run]
dir = "$tmp/run"
random_seed = $seed
[profiles.bench_data.corpus]
input = ["$wiki/wiki_0[0-7].txt"]
[profiles.bench_data.vocab]
lowercase = true
[profiles.bench_data.pairs]
max_seq_length = 128
short_seq_prob = 0.1
dupe_factor = 5
eval_fraction = 0.0
[profiles.bench_data.mask]
masked_lm_prob = 0.15
max_predictions_per_seq = 20
do_whole_word_mask = false
EOF
run() { "$bin/bertline-$1" --config "$config" --profile bench_data --no-progress "${@:2}"; }

# The vocabulary is an input of both generators, so it is built first and not timed.
RUST_LOG=warn run vocab > /dev/null
vocab="$tmp/run/vocab/vocab.txt"

# timed NAME CMD...: runs CMD under /usr/bin/time -v; prints {"wall_s", "cpu_s", "rss_kb"}.
timed() {
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    /usr/bin/time -v -o "$tmp/time-$name.txt" "$@" > "$tmp/$name.log" 2>&1 \
        || { echo "error: $name failed; its last lines:" >&2; tail -5 "$tmp/$name.log" >&2; exit 1; }
    end=$(date +%s.%N)
    awk -F': ' -v a="$start" -v b="$end" '
        /User time|System time/ { cpu += $2 }
        /Maximum resident set size/ { rss = $2 }
        END { printf "{\"wall_s\": %.3f, \"cpu_s\": %.3f, \"rss_kb\": %d}", b - a, cpu, rss }
    ' "$tmp/time-$name.txt"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# bertline's side takes well under a second, where the disk and the other tenants of a shared
# machine move single runs by 15%: it runs RUNS times (default 5, each rewriting both stages'
# outputs) and the run with the median wall time is the one reported; the range of all runs
# is printed with the setup. Peak RSS is the largest of all runs. Google's side runs once: a
# minute-long run averages that noise out by itself. Each run starts, like Google's, with no
# output of its own on disk: the previous run's shard folders are deleted first, untimed (a
# forced rerun over old outputs also deletes those, 20-30 ms of its finish).
runs=${RUNS:-5}
echo "bertline: pairs + mask, $runs runs..." >&2
: > "$tmp/runs.jsonl"
for ((r = 1; r <= runs; r++)); do
    rm -rf "$tmp/run/pairs" "$tmp/run/mask"
    pairs=$(RUST_LOG=warn timed pairs "$bin/bertline-pairs" --config "$config" --profile bench_data --no-progress --force)
    mask=$(RUST_LOG=warn timed mask "$bin/bertline-mask" --config "$config" --profile bench_data --no-progress --force)
    echo "{\"pairs\": $pairs, \"mask\": $mask}" >> "$tmp/runs.jsonl"
done
echo "Google: create_pretraining_data.py (a minute or two)..." >&2
input=$(IFS=,; echo "${files[*]}")
google=$(TF_CPP_MIN_LOG_LEVEL=2 timed google "$py" -m bert.create_pretraining_data \
    --input_file="$input" --output_file="$tmp/google.tfrecord" --vocab_file="$vocab" \
    --do_lower_case=True --max_seq_length=128 --max_predictions_per_seq=20 \
    --masked_lm_prob=0.15 --random_seed=$seed --dupe_factor=5 --short_seq_prob=0.1)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "reading both outputs back..." >&2
ours_stats=$("$py" scripts/bench_data.py stats bertline "$tmp/run/mask" "$vocab" 2>/dev/null)
google_stats=$("$py" scripts/bench_data.py stats google "$tmp/google.tfrecord" "$vocab" 2>/dev/null)

bytes=$(cat "${files[@]}" | wc -c)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
avx=$(grep -qw avx512f /proc/cpuinfo && echo AVX-512 || { grep -qw avx2 /proc/cpuinfo && echo AVX2 || echo "no AVX2"; })
{
    printf '{"setup": "bench-data: wiki_00..07 (%.1f MB), max_seq_length 128, max_predictions 20, dupe_factor 5, masked_lm_prob 0.15, short_seq_prob 0.1, seed %d"}\n' \
        "$(awk -v b="$bytes" 'BEGIN { print b / 1e6 }')" "$seed"
    printf '{"setup": "%s (%s), %d cores; load average %s before, %s after"}\n' \
        "$cpu" "$avx" "$(nproc)" "$load_before" "$load_after"
    "$py" - "$tmp/runs.jsonl" "$ours_stats" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
stats = json.loads(sys.argv[2])
wall = lambda r: r["pairs"]["wall_s"] + r["mask"]["wall_s"]
runs_by_wall = sorted(runs, key=wall)
median = runs_by_wall[len(runs) // 2]
pairs, mask = median["pairs"], median["mask"]
pairs["rss_kb"] = max(r["pairs"]["rss_kb"] for r in runs)
mask["rss_kb"] = max(r["mask"]["rss_kb"] for r in runs)
print(json.dumps({"setup": "bertline: the median of %d runs by wall time; all runs %.2f-%.2f s" % (
    len(runs), wall(runs_by_wall[0]), wall(runs_by_wall[-1]))}))
print(json.dumps({
    "generator": "bertline", "instances": stats["instances"],
    "wall_s": round(wall(median), 3),
    "cpu_s": round(pairs["cpu_s"] + mask["cpu_s"], 3),
    "rss_kb": max(pairs["rss_kb"], mask["rss_kb"]),
    "parts": {"pairs": pairs, "mask": mask}, "stats": stats}))
PY
    "$py" - "$google" "$google_stats" <<'PY'
import json, sys
run, stats = (json.loads(a) for a in sys.argv[1:])
print(json.dumps({"generator": "Google", "instances": stats["instances"], **run, "stats": stats}))
PY
} > "$tmp/rows.jsonl"
"$py" scripts/bench_data.py table "$tmp/rows.jsonl"
