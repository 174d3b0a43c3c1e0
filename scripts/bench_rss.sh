#!/usr/bin/env bash
# Peak RSS of every data stage (vocab, pairs, mask) as the corpus grows: the target of the
# issue is a peak RSS that stays flat, at most about 300 MB at the default settings, from
# 7 MB to 500 MB of text, whether the text is one file or many. Each stage runs under
# /usr/bin/time -v (wall, user + sys CPU, peak RSS) at every size (SIZES, in MB) and in two
# layouts of the same text:
#   one file     everything concatenated into one corpus.txt, a blank line between the
#                source files (each piece ends with a newline, so no documents merge)
#   many files   the same text cut into files of at most 1 MB at blank lines (a larger
#                document is a file of its own; part-00000.txt, ...), so every size has
#                files of the same size, only more
# The text is real, never generated: every wikipedia_en/wiki_*.txt, gutenberg/*.txt and
# nltk/*.txt file of the shared pre-training folder (about 73 MB; eval_wikitext2 is left
# out), in a fixed order (each group sorted by name, the groups interleaved: the first
# Wikipedia file, the first book, the first NLTK file, the second of each... so that 7 MB
# already holds all three kinds of text and 50 MB every book: a stage's peak depends on the
# longest documents it meets, and sizes are compared on the same kinds of text), repeated
# as often as needed until the size is reached, and cut only at a file boundary. Above about 73 MB the text therefore repeats:
# this benchmark measures memory, and repeated real text exercises the same code paths.
#
# Settings are the default profile's: max_seq_length 128, dupe_factor 5, short_seq_prob 0.1,
# max_predictions_per_seq 20, masked_lm_prob 0.15, eval_fraction as pipeline.toml has it,
# vocab_size 8192 (= model.vocab_size), random_seed 12345, all cores. Each (size, layout)
# gets its own run directory, deleted after its measurements (the shards of 500 MB at
# dupe_factor 5 take several GB); free disk of about 12x the largest size is checked first.
# One JSON row per (size, layout, stage) goes to rows.jsonl, then scripts/bench_rss.py
# prints the tables and a verdict per stage.
#
# Usage: scripts/bench_rss.sh            (from anywhere; builds the release binaries)
#   BERTLINE_TEXT=DIR    folder holding wikipedia_en/, gutenberg/ and nltk/
#                        (default ../shared/datasets/pretrain from the repo)
#   SIZES="7 50 500"     corpus sizes in MB (10^6 bytes), the default
#   THREADS=N            the stages' run.threads (default 0: all cores); more threads than
#                        cores shows what a larger machine would hold in memory
#   SHARD_ROWS=N         pairs.shard_rows (default: pipeline.toml's, 32768); a small value
#                        (16: 44,039 shards of each stage on 50 MB of text) shows what the
#                        number of shards costs, as a corpus of many GB makes them
#   REPEATS=N            runs of every stage at each size and layout (default 3; about 20
#                        minutes a run on 2 cores); the tables show the median of their
#                        peaks and the 300 MB target holds each run (a peak of pairs varies
#                        by up to a quarter from run to run); 1 for a quick look
#   TMPDIR=DIR           where the corpora and run directories go (default /tmp)
#   NO_BUILD=1           skip `cargo build`
#   KEEP=1               keep the temporary directory (corpora, runs, logs, timings); needs
#                        disk for every run at once
set -euo pipefail
shopt -s inherit_errexit

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
text="${BERTLINE_TEXT:-$repo/../shared/datasets/pretrain}"
[[ -d "$text" ]] || { echo "error: no folder $text; set BERTLINE_TEXT" >&2; exit 2; }
text="$(cd "$text" && pwd)"
# The three groups' files, each sorted by name, interleaved: one of each in turn.
groups=()
for group in "wikipedia_en/wiki_*.txt" "gutenberg/*.txt" "nltk/*.txt"; do
    matches=$(cd "$text" && compgen -G "$group" || true)
    [[ -n "$matches" ]] || { echo "error: $text has no $group; set BERTLINE_TEXT" >&2; exit 2; }
    groups+=("$(LC_ALL=C sort <<< "$matches")")
done
mapfile -t sources < <(for g in "${groups[@]}"; do echo "$g" | awk -v OFS='\t' '{ print NR, $0 }'; done \
    | sort -s -n -k1,1 | cut -f2-)
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time is needed (apt-get install time)" >&2; exit 2; }

threads=${THREADS:-0}
[[ $threads =~ ^[0-9]+$ ]] || { echo "error: THREADS holds '$threads'; it is a number of threads (0: all cores)" >&2; exit 2; }
shard_rows=${SHARD_ROWS:-}
[[ -z $shard_rows || $shard_rows =~ ^[1-9][0-9]*$ ]] || { echo "error: SHARD_ROWS holds '$shard_rows'; it is a number of pairs per shard (at least 1)" >&2; exit 2; }
repeats=${REPEATS:-3}
[[ $repeats =~ ^[1-9][0-9]*$ ]] || { echo "error: REPEATS holds '$repeats'; it is a number of runs (at least 1)" >&2; exit 2; }
read -r -a sizes <<< "${SIZES:-7 50 500}"
[[ ${#sizes[@]} -gt 0 ]] || { echo "error: SIZES is empty" >&2; exit 2; }
for s in "${sizes[@]}"; do
    [[ $s =~ ^[0-9]+([.][0-9]+)?$ && ! $s =~ ^0+([.]0*)?$ ]] \
        || { echo "error: SIZES holds '$s'; sizes are positive numbers of MB" >&2; exit 2; }
done

# Disk: one run at a time holds its corpus and its pairs + mask shards (measured: about 11x
# the text at dupe_factor 5; 12x asked for); KEEP holds every run at once.
scratch="${TMPDIR:-/tmp}"
need_mb=$(printf '%s\n' "${sizes[@]}" | awk -v keep="${KEEP:-}" '
    { sum += $1; if ($1 > max) max = $1 }
    END { printf "%.0f", 12 * (keep != "" ? 2 * sum : max) }')
free_mb=$(df -Pk "$scratch" | awk 'NR == 2 { printf "%.0f", $4 * 1024 / 1e6 }')
if (( free_mb < need_mb )); then
    echo "error: bench-rss needs about $need_mb MB free in $scratch (12x the text), only $free_mb MB there; set TMPDIR or SIZES" >&2
    exit 2
fi

if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -p bertline-vocab -p bertline-pairs -p bertline-mask >&2
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
for stage in vocab pairs mask; do
    [[ -x "$bin/bertline-$stage" ]] || { echo "error: no $bin/bertline-$stage; build it or unset NO_BUILD" >&2; exit 2; }
done
export MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0} # as the justfile exports it

tmp="$(mktemp -d)"
if [[ -n "${KEEP:-}" ]]; then echo "keeping $tmp" >&2; else trap 'rm -rf "$tmp"' EXIT; fi
seed=12345

# The size of every source file, and whether it lacks a final newline.
declare -A bytes_of no_newline
source_bytes=0
for f in "${sources[@]}"; do
    bytes_of[$f]=$(stat -c %s "$text/$f")
    source_bytes=$((source_bytes + bytes_of[$f]))
    [[ $(tail -c 1 "$text/$f" | od -An -tx1) == *0a* ]] || no_newline[$f]=1
done

# pieces SIZE: "REP FILE" lines, the sources in order, repeated until SIZE MB is reached.
pieces() {
    local target total=0 rep=0 f
    target=$(awk -v s="$1" 'BEGIN { printf "%.0f", s * 1e6 }')
    while (( total < target )); do
        rep=$((rep + 1))
        for f in "${sources[@]}"; do
            (( total < target )) || break
            echo "$rep $f"
            total=$((total + bytes_of[$f]))
        done
    done
}

# text SIZE: the text of SIZE MB on stdout, the sources in order, a blank line after each.
text_of() {
    local rep f
    pieces "$1" | while read -r rep f; do
        cat "$text/$f"
        [[ -z "${no_newline[$f]:-}" ]] || echo
        echo
    done
}

# corpus SIZE LAYOUT DIR: writes the text of SIZE in LAYOUT under DIR; prints corpus.input.
# "many files" is the same text cut into files of at most 1 MB at blank lines (unless one
# document is larger), so every size has files of the same size (the largest unit a stage
# holds), only more of them.
corpus() {
    local size=$1 layout=$2 dir=$3
    if [[ $layout == "one file" ]]; then
        text_of "$size" > "$dir/corpus.txt"
        echo "\"$dir/corpus.txt\""
    else
        mkdir "$dir/many"
        # Whole documents (up to and with their blank line) go to a file until the next
        # would take it past 1 MB; a document of more than 1 MB is a file of its own.
        text_of "$size" | LC_ALL=C awk -v dir="$dir/many" '
            function next_file() { close(out); out = sprintf("%s/part-%05d.txt", dir, n++); bytes = 0 }
            function end_document(  i) {
                if (lines == 0) return
                if (bytes > 0 && bytes + doc_bytes > 1000000) next_file()
                for (i = 0; i < lines; i++) print line[i] > out
                bytes += doc_bytes; lines = 0; doc_bytes = 0
            }
            BEGIN { next_file() }
            { line[lines++] = $0; doc_bytes += length($0) + 1 }
            /^[ \t\r]*$/ { end_document() }
            END { end_document() }'
        echo "\"$dir/many/*.txt\""
    fi
}

# timed SIZE LAYOUT STAGE BYTES DIR: runs bertline-STAGE on DIR's config under
# /usr/bin/time -v; appends its JSON row to rows.jsonl.
timed() {
    local size=$1 layout=$2 stage=$3 bytes=$4 dir=$5 start end
    echo "bench-rss: $size MB, $layout: $stage (run $run of $repeats)..." >&2
    start=$(date +%s.%N)
    if ! RUST_LOG=warn /usr/bin/time -v -o "$dir/time-$stage.txt" "$bin/bertline-$stage" \
        --config "$dir/pipeline.toml" --profile bench_rss --no-progress --force \
        > "$dir/$stage.log" 2>&1; then
        echo "error: bertline-$stage failed at $size MB ($layout); its last lines:" >&2
        tail -n 20 "$dir/$stage.log" >&2
        grep -h '^Command' "$dir/time-$stage.txt" >&2 || true
        exit 1
    fi
    end=$(date +%s.%N)
    awk -F': ' -v a="$start" -v b="$end" -v size="$size" -v layout="$layout" \
        -v stage="$stage" -v bytes="$bytes" '
        /User time|System time/ { cpu += $2 }
        /Maximum resident set size/ { rss = $2 }
        END {
            printf "{\"size_mb\": %s, \"layout\": \"%s\", \"stage\": \"%s\", \"input_bytes\": %.0f, ",
                size + 0, layout, stage, bytes
            printf "\"wall_s\": %.3f, \"cpu_s\": %.3f, \"rss_kb\": %.0f}\n", b - a, cpu, rss
        }' "$dir/time-$stage.txt" >> "$tmp/measured.jsonl"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for size in "${sizes[@]}"; do
    for layout in "one file" "many files"; do
        dir="$tmp/${size}mb-${layout// /-}"
        mkdir -p "$dir"
        echo "bench-rss: $size MB, $layout: writing the corpus..." >&2
        input=$(corpus "$size" "$layout" "$dir")
        if [[ $layout == "one file" ]]; then
            bytes=$(stat -c %s "$dir/corpus.txt")
        else
            bytes=$(find "$dir/many" -name '*.txt' -print0 | xargs -0 stat -L -c %s \
                | awk '{ t += $1 } END { printf "%.0f", t }')
        fi
        cp pipeline.toml "$dir/pipeline.toml"
        cat >> "$dir/pipeline.toml" <<EOF

[profiles.bench_rss.run]
dir = "$dir/run"
random_seed = $seed
threads = $threads
[profiles.bench_rss.corpus]
input = [$input]
[profiles.bench_rss.vocab]
vocab_size = 8192
[profiles.bench_rss.model]
vocab_size = 8192
[profiles.bench_rss.pairs]
max_seq_length = 128
short_seq_prob = 0.1
dupe_factor = 5
${shard_rows:+shard_rows = $shard_rows}
[profiles.bench_rss.mask]
masked_lm_prob = 0.15
max_predictions_per_seq = 20
EOF
        for stage in vocab pairs mask; do
            for ((run = 1; run <= repeats; run++)); do
                timed "$size" "$layout" "$stage" "$bytes" "$dir"
            done
        done
        if [[ -z "${KEEP:-}" ]]; then rm -rf "$dir"; fi
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
avx=$(grep -qw avx512f /proc/cpuinfo && echo AVX-512 || { grep -qw avx2 /proc/cpuinfo && echo AVX2 || echo "no AVX2"; })
runs_note=""
if ((repeats > 1)); then runs_note=", $repeats runs of each stage"; fi
setup() { python3 -c 'import json, sys; print(json.dumps({"setup": sys.argv[1]}))' "$1"; }
{
    setup "$(printf 'bench-rss: real text of %s (%d files, %.1f MB, repeated above that), max_seq_length 128, dupe_factor 5, max_predictions 20, masked_lm_prob 0.15, vocab 8192, seed %d%s' \
        "$text" "${#sources[@]}" "$(awk -v b="$source_bytes" 'BEGIN { print b / 1e6 }')" "$seed" \
        "${shard_rows:+, shard_rows $shard_rows}")$runs_note"
    setup "$(printf '%s (%s), %d cores, run.threads %s; load average %s before, %s after' \
        "$cpu" "$avx" "$(nproc)" "$threads" "$load_before" "$load_after")"
    cat "$tmp/measured.jsonl"
} > "$tmp/rows.jsonl"
python3 scripts/bench_rss.py table "$tmp/rows.jsonl"
