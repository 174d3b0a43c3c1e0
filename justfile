# bertline: the BERT paper as a pipeline of stage binaries.
# `just --list` shows every recipe; `just pipeline` runs them all on the default profile.

set shell := ["bash", "-euo", "pipefail", "-c"]

config := "pipeline.toml"
profile := "default"
bin := env_var_or_default("CARGO_TARGET_DIR", "target") + "/release"
export RUST_LOG := env_var_or_default("RUST_LOG", "info")
# mimalloc without transparent huge pages: same speed, about 25% less peak RSS in the data stages
export MIMALLOC_ALLOW_THP := env_var_or_default("MIMALLOC_ALLOW_THP", "0")

# list the recipes
default:
    @just --list

# build every stage binary (release, CPU)
build:
    cargo build --release --workspace

# the whole pipeline on a profile: vocab -> pairs -> mask -> pretrain -> finetune -> report
[group('pipeline')]
pipeline profile=profile *args: build
    #!/usr/bin/env bash
    set -euo pipefail
    start=$(date +%s)
    for s in vocab pairs mask pretrain finetune report; do
        echo "== $s" >&2
        {{bin}}/bertline-$s --config {{config}} --profile {{profile}} {{args}} > /dev/null
    done
    {{bin}}/bertline-report --config {{config}} --profile {{profile}} --summary
    echo "pipeline finished in $(( $(date +%s) - start )) s" >&2

# rerun one stage even if it is fresh (downstream stages become stale if its output changes)
[group('pipeline')]
stage name profile=profile *args: build
    {{bin}}/bertline-{{name}} --config {{config}} --profile {{profile}} --force {{args}}

# WordPiece vocab: corpus text -> vocab.txt, tokenizer.json
[group('pipeline')]
vocab profile=profile *args: build
    {{bin}}/bertline-vocab --config {{config}} --profile {{profile}} {{args}}

# sentence pairs for NSP: corpus text + vocab -> pairs shards
[group('pipeline')]
pairs profile=profile *args: build
    {{bin}}/bertline-pairs --config {{config}} --profile {{profile}} {{args}}

# masked-LM instances: pairs shards -> mask shards
[group('pipeline')]
mask profile=profile *args: build
    {{bin}}/bertline-mask --config {{config}} --profile {{profile}} {{args}}

# statistics of the written mask shards (vs Google's generator)
[group('pipeline')]
stats profile=profile: build
    {{bin}}/bertline-mask --config {{config}} --profile {{profile}} stats

# MLM + NSP pre-training: mask shards -> checkpoint
[group('pipeline')]
pretrain profile=profile *args: build
    {{bin}}/bertline-pretrain --config {{config}} --profile {{profile}} {{args}}

# GLUE / SQuAD fine-tuning: checkpoint -> dev scores, test predictions
[group('pipeline')]
finetune profile=profile *args: build
    {{bin}}/bertline-finetune --config {{config}} --profile {{profile}} {{args}}

# report.md + report.html from the manifest
[group('pipeline')]
report profile=profile *args: build
    {{bin}}/bertline-report --config {{config}} --profile {{profile}} {{args}}

# every stage as fresh / stale / missing, and why
status profile=profile: build
    {{bin}}/bertline status --config {{config}} --profile {{profile}}

# delete a run directory (asks first)
clean profile=profile *args: build
    {{bin}}/bertline clean --config {{config}} --profile {{profile}} {{args}}

# the test suite (what CI runs)
[group('check')]
test *args:
    cargo test --release --workspace {{args}}

# the long checks left out of `just test`
[group('check')]
test-ignored:
    cargo test --release --workspace -- --ignored

# crash campaign: every stage killed KILLS times at seeded points (inside the manifest open,
# between publish and commit, random SIGKILLs), each rerun and checked with --verify, outputs
# compared with an uninterrupted run
[group('check')]
chaos kills="20" seed="16" profile="tiny": build
    bash scripts/chaos.sh --kills {{kills}} --seed {{seed}} --profile {{profile}}

# formatting, lints and tests, as CI would want them
[group('check')]
ci:
    cargo fmt --all -- --check
    cargo clippy --release --workspace -- --deny warnings
    cargo test --release --workspace

# data stages vs Google's create_pretraining_data.py, side by side (installs it into .venv-bench/)
[group('bench')]
bench-data:
    bash scripts/bench_data.sh

# peak RSS of vocab, pairs and mask from 7 to 500 MB of real text, one file and many (SIZES="7 50 500")
[group('bench')]
bench-rss:
    bash scripts/bench_rss.sh

# training step time vs PyTorch (HF BertForPreTraining), BERT-mini
[group('bench')]
bench-pretrain:
    bash scripts/bench_pretrain.sh

# fine-tuning throughput vs PyTorch
[group('bench')]
bench-finetune:
    bash scripts/bench_finetune.sh

# every benchmark
[group('bench')]
bench: bench-data bench-rss bench-pretrain bench-finetune
