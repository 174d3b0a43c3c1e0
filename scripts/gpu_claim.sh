#!/usr/bin/env bash
# The prepared GPU run of the paper's claim: pre-train the `gpu` profile on one GPU within
# PRETRAIN_S seconds, then fine-tune its tasks (SST-2, MRPC, STS-B, CoLA on their full
# training sets, 3 seeds, pre-trained and scratch arms) on the same card, then the report
# with its verdict. One command, building nothing. Every stage is recorded in the run's
# manifest and pre-training resumes from its last checkpoint, so a run cut short by its
# budget is finished by running the same command again.
#
# On the GPU machine it needs what scripts/pack_gpu_carry.sh put in .gpu-carry/ (the CUDA
# bundle with bertline-pretrain and bertline-finetune built --features cuda, the CPU
# binaries of the other stages, the shared corpus). On a CPU, at toy size, it runs the
# binaries of BERTLINE_BIN instead; that is how it is tested before a GPU is lent:
#   BERTLINE_BIN=target/release PROFILE=tiny OUT=/tmp/claim scripts/gpu_claim.sh
#
# Pre-training steps: a profile whose [profiles.NAME.pretrain] lines end in `# gpu steps`
# gets num_train_steps (and warmup, eval and checkpoint cadence) sized to PRETRAIN_S from a
# 10-step bench on the card (scripts/fit_steps.py); other profiles keep their steps.
#
# Writes under $OUT: gpu_claim.log (everything), results.json (fine-tuning), report.md,
# report.html, metrics.jsonl (pre-training) and checkpoint.tar (model.safetensors,
# config.json, vocab.txt, tokenizer.json).
#
# Usage: [PROFILE=gpu] [BUDGET_S=690] [PRETRAIN_S=480] [OUT=.] scripts/gpu_claim.sh
set -uo pipefail

start=$(date +%s)
profile=${PROFILE:-gpu}
budget=${BUDGET_S:-690}
pretrain_budget=${PRETRAIN_S:-480}
out=${OUT:-.}
mkdir -p "$out"
exec 2> >(tee -a "$out/gpu_claim.log" >&2)
left() { echo $((budget - ($(date +%s) - start))); }
say() { echo "gpu_claim [$(($(date +%s) - start)) s]: $*" >&2; }

# 0. Binaries: BERTLINE_BIN for every stage (CPU), else the carried CUDA bundle for the two
# training stages and the carried CPU binaries for the others.
if [ -n "${BERTLINE_BIN:-}" ]; then
    cpu_bin=$BERTLINE_BIN
    train_bin=$BERTLINE_BIN
else
    carry=.gpu-carry
    mkdir -p target/release ../shared/datasets/pretrain
    tar -xJf "$carry/bundle.tar.xz" -C target || { say "no bundle in $carry"; exit 1; }
    tar -xJf "$carry/cpu-bins.tar.xz" -C target/release || { say "no CPU binaries in $carry"; exit 1; }
    tar -xJf "$carry/corpus.tar.xz" -C ../shared/datasets/pretrain || { say "no corpus in $carry"; exit 1; }
    # shellcheck source=scripts/gpu_env.sh
    source scripts/gpu_env.sh || exit 1
    cpu_bin=target/release
    train_bin=$bundle/bin
    for s in pretrain finetune; do
        [ -x "$train_bin/bertline-$s" ] || { say "no $train_bin/bertline-$s: rebuild with scripts/build_cuda.sh"; exit 1; }
    done
fi
for s in vocab pairs mask report; do
    [ -x "$cpu_bin/bertline-$s" ] || { say "no $cpu_bin/bertline-$s"; exit 1; }
done
stage() { # stage NAME BIN SECONDS: one stage of the profile, skipped by the manifest when fresh
    say "stage $1 ($3 s at most)"
    timeout "$3" env -u LD_PRELOAD "$2/bertline-$1" --profile "$profile" --no-progress >/dev/null
}
train_stage() { # as `stage`, with the CUDA preload shim when there is one
    say "stage $1 ($2 s at most)"
    timeout "$2" "$train_bin/bertline-$1" --profile "$profile" --no-progress >/dev/null
}

# 1. Data stages on the CPU cores.
for s in vocab pairs mask; do
    stage "$s" "$cpu_bin" 300 || { say "stage $s failed"; exit 1; }
done

# 2. Pre-training sized to its budget (profiles with `# gpu steps` lines), then run.
if grep -A12 "^\[profiles.$profile.pretrain\]" pipeline.toml | grep -q "# gpu steps"; then
    bench_json=$(mktemp)
    timeout 120 "$train_bin/bertline-pretrain" --profile "$profile" --bench --bench-profile --bench-steps 10 >"$bench_json" ||
        { say "bench failed"; cat "$bench_json" >&2; exit 1; }
    step_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_step_s"])' "$bench_json")
    python3 scripts/fit_steps.py pipeline.toml "$profile" "$step_s" "$((pretrain_budget - 60))" >&2 ||
        { say "pre-training does not fit $pretrain_budget s at $step_s s/step"; exit 1; }
fi
train_stage pretrain "$pretrain_budget"
pretrain_exit=$?
say "pretrain exit $pretrain_exit; $(left) s left"
[ "$pretrain_exit" = 0 ] ||
    say "pre-training did not finish (124: out of time): run the same command again to resume"

# 3. Fine-tuning, both arms, every seed; 4. the report with the claim's verdict.
reserve=30
if [ "$pretrain_exit" = 0 ] && [ "$(left)" -gt $((reserve + 30)) ]; then
    train_stage finetune $(($(left) - reserve))
    say "finetune exit $?; $(left) s left"
fi
stage report "$cpu_bin" 60 || say "report failed"
env -u LD_PRELOAD "$cpu_bin/bertline-report" --profile "$profile" --summary 2>/dev/null >&2

# 5. What comes back.
# The profile's run.dir (tomllib needs Python 3.11; older ones get the runs/PROFILE convention).
run_dir=$(python3 -c 'import sys,tomllib; c=tomllib.load(open("pipeline.toml","rb")); p=c.get("profiles",{}).get(sys.argv[1],{}); print(p.get("run",{}).get("dir") or c["run"]["dir"])' "$profile" 2>/dev/null) ||
    run_dir=runs/$profile
for f in finetune/results.json report/report.md report/report.html pretrain/metrics.jsonl; do
    [ -f "$run_dir/$f" ] && cp "$run_dir/$f" "$out/" || say "missing $run_dir/$f"
done
if [ -f "$run_dir/pretrain/model.safetensors" ]; then
    tar -cf "$out/checkpoint.tar" -C "$run_dir/pretrain" model.safetensors config.json vocab.txt tokenizer.json
fi
say "done; $(left) s of the budget left"
