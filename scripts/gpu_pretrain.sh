#!/usr/bin/env bash
# The prepared GPU pre-training run: the `wiki-gpu` profile end to end on one GPU machine,
# in one device command, sized to a time budget. Builds nothing.
#
# Needs, from the repo root on the GPU machine, what scripts/pack_gpu_carry.sh put in
# .gpu-carry/ (carried): the CUDA bundle (bertline-pretrain --features cuda, hf_parity), the
# CPU data-stage binaries (vocab, pairs, mask) and the profile's corpus (shared Wikipedia +
# Gutenberg text, unpacked to ../shared/datasets/pretrain as on the developer machine).
#
# Steps (each under its own timeout; the pre-training gets what is left of BUDGET_S):
#   1. hf_parity cuda_one_step_matches_cpu: GPU vs CPU logits and one AdamW step (docs/gpu.md);
#   2. vocab -> pairs -> mask on the machine's CPU cores (`wiki-gpu`: dupe_factor 10);
#   3. bertline-pretrain --bench --bench-profile: the profile's step time on the card;
#   4. num_train_steps (and warmup, eval and checkpoint cadence) set in pipeline.toml's
#      `# gpu steps` lines so that training fits the remaining budget; then bertline-pretrain;
#   5. the final checkpoint (or the newest one, if the time ran out) as $OUT/checkpoint.tar:
#      model.safetensors, config.json, vocab.txt, tokenizer.json, metrics.jsonl;
#   6. with time left: BERT-mini bench (bertline) and PyTorch's on the same card.
# Logs: $OUT/gpu_pretrain.log (everything), $OUT/gpu_check.jsonl (JSON rows); OUT defaults to ".".
#
# Usage: BUDGET_S=540 [RESERVE_S=110] [CLOSING_BENCHES=1] scripts/gpu_pretrain.sh
set -uo pipefail

start=$(date +%s)
budget=${BUDGET_S:-540}
profile=${PROFILE:-wiki-gpu}
out=${OUT:-.}
results=$out/gpu_check.jsonl
: >"$results"
exec 2> >(tee -a "$out/gpu_pretrain.log" >&2)
left() { echo $((budget - ($(date +%s) - start))); }
say() { echo "gpu_pretrain [$(($(date +%s) - start)) s]: $*" >&2; }

# 0. Unpack the carry.
carry=.gpu-carry
mkdir -p target/release ../shared/datasets/pretrain
tar -xJf "$carry/bundle.tar.xz" -C target || { say "no bundle in $carry"; exit 1; }
tar -xJf "$carry/cpu-bins.tar.xz" -C target/release || { say "no CPU binaries in $carry"; exit 1; }
tar -xJf "$carry/corpus.tar.xz" -C ../shared/datasets/pretrain || { say "no corpus in $carry"; exit 1; }
say "unpacked: $(du -sh ../shared/datasets/pretrain | cut -f1) of text"
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || exit 1
pretrain_bin=$bundle/bin/bertline-pretrain

# 1. GPU vs CPU parity on the HF fixture.
run_json cuda_one_step_matches_cpu 90 \
    "$bundle/bin/hf_parity" --ignored --exact cuda_one_step_matches_cpu --nocapture --test-threads 1

# 2. Data stages on the CPU cores.
for s in vocab pairs mask; do
    say "stage $s"
    timeout 150 env -u LD_PRELOAD target/release/bertline-"$s" --profile "$profile" --no-progress >/dev/null ||
        { say "stage $s failed"; exit 1; }
done
env -u LD_PRELOAD target/release/bertline-mask --profile "$profile" stats >&2

# 3. The profile's step time on this card.
bench_json=$(mktemp)
timeout 90 "$pretrain_bin" --profile "$profile" --bench --bench-profile --bench-steps 10 >"$bench_json" ||
    { say "bench failed"; cat "$bench_json" >&2; exit 1; }
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["check"]="bertline_pretrain_bench_profile"; print(json.dumps(d))' \
    "$bench_json" | tee -a "$results" >&2
step_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_step_s"])' "$bench_json")

# 4. Steps that fit: what is left, less a reserve for start-up, evaluations, the held-out
# perplexity, packing and the closing benches, at 90% of the benched step rate.
reserve=${RESERVE_S:-110}
step_budget=$(($(left) - reserve))
python3 scripts/fit_steps.py pipeline.toml "$profile" "$step_s" "$step_budget" ||
    { say "pre-training does not fit $step_budget s at $step_s s/step: not training"; exit 1; }
steps=$(sed -n "/^\[profiles.$profile.pretrain\]/,/^\[/s/^num_train_steps = \([0-9]*\).*/\1/p" pipeline.toml)
grep -A9 "^\[profiles.$profile.pretrain\]" pipeline.toml >&2
say "training $steps steps at ~$step_s s/step; $(left) s left"
timeout $(($(left) - 45)) "$pretrain_bin" --profile "$profile" --no-progress
say "pretrain exit $? ; $(left) s left"

# 5. The checkpoint: the recorded one, else the newest checkpoint directory.
dir=runs/$profile/pretrain
[ -f "$dir/model.safetensors" ] || dir=$(find "runs/$profile" -type d -name 'checkpoint-*' | sort | tail -1)
if [ -n "$dir" ] && [ -f "$dir/model.safetensors" ]; then
    metrics=$(find "runs/$profile" -name metrics.jsonl | head -1)
    cp "$metrics" "$out/metrics.jsonl" 2>/dev/null
    tar -cf "$out/checkpoint.tar" -C "$dir" model.safetensors config.json vocab.txt tokenizer.json
    say "checkpoint from $dir: $(du -h "$out/checkpoint.tar" | cut -f1)"
else
    say "no checkpoint written"
fi

# 6. Closing benches while time is left (CLOSING_BENCHES=0 skips them).
if [ "${CLOSING_BENCHES:-1}" = 1 ] && [ "$(left)" -gt 40 ]; then
    run_json bertline_pretrain_bench_mini 30 bash -c \
        '"$0" --bench --bench-steps 10 | python3 -c "import json,sys; d=json.load(sys.stdin); d[\"check\"]=\"bertline_pretrain_bench_mini\"; print(json.dumps(d))"' \
        "$pretrain_bin"
fi
if [ "${CLOSING_BENCHES:-1}" = 1 ] && [ "$(left)" -gt 40 ]; then
    run_json torch_mini_f32 30 env -u LD_PRELOAD python3 scripts/bench_pretrain_torch.py \
        --device cuda --size mini --dtype f32 --steps 10 --skip-forward
fi
say "done; $(left) s of the budget left"
