#!/usr/bin/env bash
# Throughput and memory of the data stages (pairs + mask) against Google's
# create_pretraining_data.py on the same text: wikipedia_en/wiki_00..07, max_seq_length 128,
# max_predictions_per_seq 20, dupe_factor 5, short_seq_prob 0.1, masked_lm_prob 0.15.
#
# Google's script on these 8 files: 95,106 instances in about 106 s wall, 928 MB peak RSS.
# Target: >= 100x its throughput, < 200 MB peak RSS.
#
# Usage: scripts/bench_data.sh            (from anywhere; builds the release binaries)
#   BERTLINE_WIKI=DIR    folder holding wiki_00.txt..wiki_07.txt
#                        (default ../shared/datasets/pretrain/wikipedia_en from the repo)
#   NO_BUILD=1           skip `cargo build`
#   KEEP=1               keep the temporary run directory
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
wiki="${BERTLINE_WIKI:-$repo/../shared/datasets/pretrain/wikipedia_en}"
[[ -d "$wiki" ]] || wiki=/work/shared/datasets/pretrain/wikipedia_en
wiki="$(cd "$wiki" && pwd)"
files=("$wiki"/wiki_0[0-7].txt)
if [[ ${#files[@]} -ne 8 || ! -f "${files[0]}" ]]; then
    echo "error: $wiki does not hold wiki_00.txt..wiki_07.txt; set BERTLINE_WIKI" >&2
    exit 2
fi
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time is needed (apt-get install time)" >&2; exit 2; }

if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -p bertline-vocab -p bertline-pairs -p bertline-mask >&2
fi
bin="$repo/target/release"

tmp="$(mktemp -d)"
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$tmp"' EXIT
config="$tmp/pipeline.toml"
cp pipeline.toml "$config"
cat >> "$config" <<EOF

[profiles.bench_data.run]
dir = "$tmp/run"
[profiles.bench_data.corpus]
input = ["$wiki/wiki_0[0-7].txt"]
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

# The vocabulary is an input of both scripts, so it is built first and not timed.
RUST_LOG=warn run vocab > /dev/null

# timed STAGE: runs it under /usr/bin/time; sets wall_s and rss_kb.
timed() {
    local start end
    start=$(date +%s.%N)
    RUST_LOG=warn /usr/bin/time -v -o "$tmp/time-$1.txt" \
        "$bin/bertline-$1" --config "$config" --profile bench_data --no-progress --force > /dev/null
    end=$(date +%s.%N)
    wall_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    rss_kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/time-$1.txt")
    cpu_s=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.3f", s }' "$tmp/time-$1.txt")
}
timed pairs
pairs_s=$wall_s pairs_rss=$rss_kb pairs_cpu=$cpu_s
timed mask
mask_s=$wall_s mask_rss=$rss_kb mask_cpu=$cpu_s

instances=$(run mask stats --json | awk -F': ' '/"instances"/ { gsub(/,/, "", $2); print $2 }')
bytes=$(cat "${files[@]}" | wc -c)
threads=$(nproc)

# Google's script is one single-threaded Python process, so its CPU time is about its wall
# time; instances per CPU-second compares the two fairly on a loaded machine.

awk -v n="$instances" -v b="$bytes" -v ps="$pairs_s" -v ms="$mask_s" \
    -v pr="$pairs_rss" -v mr="$mask_rss" -v t="$threads" -v cpu="$(awk -v a="$pairs_cpu" -v b="$mask_cpu" 'BEGIN { print a + b }')" \
    -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
    s = ps + ms
    rss = (pr > mr ? pr : mr) / 1024
    g_n = 95106; g_s = 106; g_rss = 928
    printf "bench_data: wiki_00..07 (%.1f MB), seq 128, max_pred 20, dupe 5, %d cores, load %s\n", b / 1e6, t, load
    printf "%-22s %14s %14s %10s\n", "", "bertline", "Google", "ratio"
    printf "%-22s %14d %14d\n", "instances", n, g_n
    printf "%-22s %14.2f %14.1f\n", "wall s (pairs+mask)", s, g_s
    printf "%-22s %14.2f\n", "  pairs s", ps
    printf "%-22s %14.2f\n", "  mask s", ms
    printf "%-22s %14.0f %14.0f %9.0fx\n", "instances/s", n / s, g_n / g_s, (n / s) / (g_n / g_s)
    printf "%-22s %14.2f %14.1f\n", "CPU s (user+sys)", cpu, g_s
    printf "%-22s %14.0f %14.0f %9.0fx\n", "instances/CPU-s", n / cpu, g_n / g_s, (n / cpu) / (g_n / g_s)
    printf "%-22s %14.2f %14.3f %9.0fx\n", "input MB/s", b / 1e6 / s, b / 1e6 / g_s, g_s / s
    printf "%-22s %14.0f %14.0f %9.2fx\n", "peak RSS MB", rss, g_rss, rss / g_rss
    printf "targets: >= 100x throughput: %s; < 200 MB RSS: %s\n",
        ((n / s) / (g_n / g_s) >= 100 ? "met" : "NOT met"), (rss < 200 ? "met" : "NOT met")
}'
