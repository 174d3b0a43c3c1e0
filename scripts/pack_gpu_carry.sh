#!/usr/bin/env bash
# Packs what scripts/gpu_pretrain.sh and scripts/gpu_claim.sh need on a GPU machine into .gpu-carry/ (git-ignored),
# xz-compressed to fit a 64 MiB carry: the CUDA bundle (scripts/build_cuda.sh), the CPU
# data-stage and report binaries (cargo build --release --workspace) and the wiki-gpu corpus.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
carry=.gpu-carry
shared=${BERTLINE_SHARED_PRETRAIN:-../shared/datasets/pretrain}
[ -f target/cuda-bundle/paths.env ] || { echo "pack_gpu_carry: run scripts/build_cuda.sh first" >&2; exit 1; }
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >>.git/info/exclude
rm -rf "$carry" && mkdir -p "$carry/bins"
for s in vocab pairs mask report; do
    strip -o "$carry/bins/bertline-$s" "target/release/bertline-$s"
done
tar -C "$carry/bins" -cf - . | xz -T0 -6 >"$carry/cpu-bins.tar.xz"
rm -rf "$carry/bins"
tar -C target -cf - cuda-bundle | xz -T0 -6 >"$carry/bundle.tar.xz"
tar -C "$shared" -cf - wikipedia_en gutenberg | xz -T0 -6 >"$carry/corpus.tar.xz"
du -ch "$carry"/* >&2
