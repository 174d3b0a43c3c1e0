#!/usr/bin/env bash
# The crash campaign behind `just chaos`: every stage of a profile (default `tiny`) killed N
# times (default 20) at seeded points, each kill followed by a plain rerun and a
# `bertline status --verify`; at the end the outputs are compared with an uninterrupted run.
#
# Kill points, drawn per kill from the seed:
#   open:US   abort US microseconds into the manifest open (sled writes its snapshot there)
#   publish   abort after the stage marked its outputs as publishing, before moving them
#   commit    abort after the outputs moved into place, before the manifest records them
#   record    abort inside the manifest's commit: the artifact records written, the stage
#             record naming them not
#   sigkill   SIGKILL after a random delay within the stage's uninterrupted duration
# Killed runs use --force (a finished stage being redone, the worst case for publishing);
# the rerun is a plain run, as a user would type it. The kind of each kill, its open delay and
# its SIGKILL instant (a fraction of the stage's uninterrupted duration) come from the seed.
#
# Final outputs are compared file by file with the uninterrupted run by
# scripts/timeless.py: byte for byte, except the wall-clock parts of files that record
# timings next to results (fine-tuning JSON results and predictions, metrics.jsonl, the
# report's durations, time stamps, throughputs and run history), which it leaves out; any
# other difference, a loss, score, prediction or hash, is a mismatch.
#
# usage: scripts/chaos.sh [--kills N] [--seed S] [--profile NAME] [--stages "vocab pairs ..."]
#        KEEP=1 keeps the two projects (their path is printed)
set -euo pipefail

kills=20
seed=16
profile=tiny
stages="vocab pairs mask pretrain finetune report"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kills) kills=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        --stages) stages=$2; shift 2 ;;
        *) echo "usage: $0 [--kills N] [--seed S] [--profile NAME] [--stages LIST]" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$repo/target}/release
for b in bertline bertline-vocab bertline-pairs bertline-mask bertline-pretrain bertline-finetune bertline-report; do
    [[ -x $bin/$b ]] || { echo "error: $bin/$b not built; run \`just build\`" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "error: python3 is needed (scripts/timeless.py)" >&2; exit 2; }
export RUST_LOG=${RUST_LOG:-warn}
RANDOM=$seed

ulimit -c 0 # the aborts are deliberate: no core files

work=$(mktemp -d "${TMPDIR:-/tmp}/bertline-chaos.XXXXXX")
if [[ -n ${KEEP:-} ]]; then echo "keeping $work" >&2; else trap 'rm -rf "$work"' EXIT; fi
# Two projects on the same data: `ref` runs uninterrupted, `chaos` is killed. Profiles that
# read ../shared/datasets find it next to them.
[[ -e $repo/../shared ]] && ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
for p in ref chaos; do
    mkdir -p "$work/$p"
    ln -s "$repo/datasets" "$work/$p/datasets"
    cp "$repo/pipeline.toml" "$work/$p/pipeline.toml"
done

# Every command runs in its project with a relative --config, as a user would type it (the
# report then names the run ./runs/PROFILE in both projects).
run_stage() { # project stage [flags...]
    local p=$1 s=$2; shift 2
    (cd "$work/$p" && "$bin/bertline-$s" --config pipeline.toml --profile "$profile" \
        --no-progress "$@" >/dev/null 2>>"$work/$p.log")
}

# Digests of a stage's files, wall-clock fields left out (scripts/timeless.py).
stage_hashes() { # project stage
    python3 "$repo/scripts/timeless.py" "$work/$1/runs/$profile" "$2"
}

declare -A secs
echo "uninterrupted reference run (profile $profile)..." >&2
for s in $stages; do
    t0=$(date +%s%N)
    run_stage ref "$s"
    secs[$s]=$(( ($(date +%s%N) - t0) / 1000000 ))
done

printf '%-9s %6s %6s %8s %7s %7s %8s %8s %9s %8s %11s\n' \
    stage kills open publish commit record sigkill "ran-out" reruns verified mismatches
total_mismatch=0
errors=0
for s in $stages; do
    run_stage chaos "$s" # the stage's first run, uninterrupted (and its upstream's)
    declare -A landed=([open]=0 [publish]=0 [commit]=0 [record]=0 [sigkill]=0 [ran-out]=0)
    reruns=0 verified=0
    for ((k = 0; k < kills; k++)); do
        case $((RANDOM % 5)) in
            0) point="open:$((RANDOM % 30000))" ;;
            1) point=publish ;;
            2) point=commit ;;
            3) point=record ;;
            4) point=sigkill ;;
        esac
        # Where it landed, from the exit status: 137 killed by the SIGKILL, 134 aborted at the
        # crash point, 0 finished first ("ran-out"); anything else is the stage failing on
        # its own, which counts as an error.
        if [[ $point == sigkill ]]; then
            delay_ms=$(( (RANDOM * 32768 + RANDOM) % (secs[$s] + 1) ))
            (cd "$work/chaos" && exec "$bin/bertline-$s" --config pipeline.toml \
                --profile "$profile" --no-progress --force >/dev/null 2>>"$work/chaos.log") &
            pid=$!
            sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
            kill -9 "$pid" 2>/dev/null || true
            rc=0
            wait "$pid" 2>/dev/null || rc=$?
            expect=137
        else
            rc=0
            BERTLINE_CRASH_AT=$point run_stage chaos "$s" --force 2>/dev/null || rc=$?
            expect=134
        fi
        if [[ $rc -eq $expect ]]; then
            kind=${point%%:*}
            landed[$kind]=$((landed[$kind] + 1))
        elif [[ $rc -eq 0 ]]; then
            landed[ran-out]=$((landed[ran-out] + 1))
        else
            errors=$((errors + 1))
            echo "$s killed at $point exited $rc: $(tail -1 "$work/chaos.log")" >&2
        fi
        # The rerun a user would type, then the check with hashes.
        if run_stage chaos "$s"; then
            reruns=$((reruns + 1))
        else
            errors=$((errors + 1))
            echo "rerun of $s after a kill at $point failed: $(tail -1 "$work/chaos.log")" >&2
        fi
        line=$(cd "$work/chaos" && "$bin/bertline" status --config pipeline.toml \
            --profile "$profile" --verify 2>>"$work/chaos.log" | awk -v s="$s" '$1 == s { print $2 }')
        if [[ $line == fresh ]]; then
            verified=$((verified + 1))
        else
            echo "after a kill at $point, $s is ${line:-unknown} under --verify" >&2
        fi
    done
    differ=$(diff <(stage_hashes ref "$s") <(stage_hashes chaos "$s") | grep '^[<>]' || true)
    if [[ -n $differ ]]; then
        echo "$s: outputs differ from the uninterrupted run:"$'\n'"$differ" >&2
        # Both sides' files kept, whatever KEEP says, so the difference can be read.
        kept=$(mktemp -d "${TMPDIR:-/tmp}/bertline-chaos-mismatch-$s.XXXXXX")
        cp -r "$work/ref/runs/$profile/$s" "$kept/ref"
        cp -r "$work/chaos/runs/$profile/$s" "$kept/chaos"
        cp "$work/chaos.log" "$kept/"
        echo "$s: both sides' files kept in $kept" >&2
    fi
    mismatch=$(awk '{ print $3 }' <<<"$differ" | sort -u | grep -c . || true)
    total_mismatch=$((total_mismatch + mismatch))
    printf '%-9s %6d %6d %8d %7d %7d %8d %8d %9d %8d %11d\n' "$s" "$kills" "${landed[open]}" \
        "${landed[publish]}" "${landed[commit]}" "${landed[record]}" "${landed[sigkill]}" "${landed[ran-out]}" \
        "$reruns" "$verified" "$mismatch"
done
echo "seed $seed; reference seconds: $(for s in $stages; do printf '%s %d.%03d  ' "$s" $((secs[$s] / 1000)) $((secs[$s] % 1000)); done)"
echo "mismatches: output files that differ from the uninterrupted run's (sha256; wall-clock fields left out by scripts/timeless.py)"
[[ $total_mismatch -eq 0 && $errors -eq 0 ]]
