#!/usr/bin/env bash
# Build `bertline-pretrain --features cuda` on a machine with NO GPU and no CUDA install.
#
# dfdx 0.13's build script asks `nvidia-smi` for the compute capability and runs `nvcc --ptx`
# on its kernels; cudarc 0.9's build script wants `$CUDA_ROOT/include/cuda.h` and links
# libcuda, libnvrtc, libcublas and libcublasLt. This script supplies all of it from PyPI:
#   1. a venv with the CUDA 13.0 wheels of scripts/requirements-cuda.txt (nvcc, NVVM, headers,
#      cuBLAS, NVRTC), under target/cuda-venv;
#   2. a CUDA_ROOT under target/cuda-toolkit: include/ from the wheels, lib/ with the unversioned
#      .so names the linker wants, and a stub libcuda.so.1 (the real one comes with the driver);
#   3. a fake `nvidia-smi` on PATH that answers the compute capability (default 9.0: H100/H200);
#   4. cargo build in its own target dir (target/cuda): bertline-pretrain and the hf_parity test
#      binary (its ignored cuda_* tests are the GPU checks), then a bundle in target/cuda-bundle
#      (binaries, the headers NVRTC reads at run time, a PTX-ISA shim, paths.env) that
#      scripts/gpu_check.sh runs on the GPU machine.
#
# Usage: scripts/build_cuda.sh [extra cargo args, e.g. --example NAME]
#        scripts/build_cuda.sh --ptx-only   (step 1, then nvcc --ptx on src/model/device/cuda/*.cu)
# Env:   CUDA_COMPUTE_CAP=90 (major*10+minor), CARGO_BUILD_JOBS, BERTLINE_CUDA_NICE=10,
#        BERTLINE_CUDA_WORK (default target/: holds cuda-venv, cuda-toolkit and the cuda target dir),
#        BERTLINE_CUDA_BUNDLE (default target/cuda-bundle)
# See docs/gpu.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
compute_cap=${CUDA_COMPUTE_CAP:-90}
work=${BERTLINE_CUDA_WORK:-$repo/target}
venv=$work/cuda-venv
toolkit=$work/cuda-toolkit
target_dir=$work/cuda
bundle=${BERTLINE_CUDA_BUNDLE:-$repo/target/cuda-bundle}

log() { echo "build_cuda: $*" >&2; }

install_toolchain() {
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv"
    fi
    if ! "$venv/bin/pip" freeze | sort | diff -q - <(grep -E '^[a-z]' "$repo/scripts/requirements-cuda.txt" | sort) >/dev/null; then
        log "installing the CUDA wheels into $venv"
        "$venv/bin/pip" install --no-cache-dir --quiet -r "$repo/scripts/requirements-cuda.txt"
    fi
    cu13=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
    [ -x "$cu13/bin/nvcc" ] || { log "no nvcc in $cu13/bin: reinstall $venv"; exit 1; }
}

# Driver API symbols cudarc declares; the stub defines them all as no-ops so the link resolves.
driver_symbols() {
    local sys
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.9.*/src/driver/sys.rs | sort -V | tail -1)
    grep -oE 'pub fn cu[A-Za-z0-9_]+' "$sys" | sed 's/pub fn //' | sort -u
}

write_libcuda_stub() {
    local src=$toolkit/stub/libcuda.c
    mkdir -p "$toolkit/stub"
    {
        echo "/* Link-time stand-in for the driver's libcuda.so.1; never loaded at run time. */"
        driver_symbols | sed 's/.*/int &(void) { return 999; }/'
    } >"$src"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$toolkit/lib/libcuda.so" "$src"
}

assemble_toolkit() {
    mkdir -p "$toolkit/lib" "$toolkit/bin"
    ln -sfn "$cu13/include" "$toolkit/include"
    for lib in cublas cublasLt nvrtc cudart; do
        ln -sf "$cu13/lib/lib$lib.so.13" "$toolkit/lib/lib$lib.so"
    done
    write_libcuda_stub
    # dfdx's build.rs reads `nvidia-smi --query-gpu=compute_cap --format=csv`.
    printf '#!/bin/sh\n# fake nvidia-smi for building without a GPU (scripts/build_cuda.sh)\nprintf "compute_cap\\n%s.%s\\n"\n' \
        "${compute_cap%?}" "${compute_cap#"${compute_cap%?}"}" >"$toolkit/bin/nvidia-smi"
    chmod +x "$toolkit/bin/nvidia-smi"
}

# Runs cargo with the fake toolkit in front: nvcc and nvidia-smi on PATH, CUDA_ROOT for cudarc.
cuda_cargo() {
    PATH="$toolkit/bin:$cu13/bin:$PATH" \
        CUDA_ROOT="$toolkit" \
        CUDA_COMPUTE_CAP="$compute_cap" \
        LD_LIBRARY_PATH="$cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        nice -n "${BERTLINE_CUDA_NICE:-10}" \
        cargo "$@" --release --features cuda --target-dir "$target_dir"
}

# The executable of integration test $1 built with the cuda feature.
cuda_test_binary() {
    log "cargo test --no-run -p bertline --test $1 --features cuda"
    local exe
    exe=$(cuda_cargo test -p bertline --test "$1" --no-run --message-format=json |
        grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
    [ -x "$exe" ] || { log "no $1 test executable"; exit 1; }
    echo "$exe"
}

# The two training stages' binaries (gpu_claim.sh fine-tunes on the card too), and the test binaries whose ignored tests gpu_check.sh runs: hf_parity
# (cuda_*), cuda_kernels (bertline's CUDA kernels vs their CPU references) and gpu_step (one
# step GPU vs CPU with dropout, throughput).
build() {
    log "cargo build -p bertline-pretrain -p bertline-finetune --features cuda (sm_$compute_cap) into $target_dir"
    cuda_cargo build -p bertline-pretrain -p bertline-finetune "$@"
    parity_test=$(cuda_test_binary hf_parity)
    kernels_test=$(cuda_test_binary cuda_kernels)
    step_test=$(cuda_test_binary gpu_step)
}

# nvcc --ptx on every kernel of src/model/device/cuda (proves they compile; the run time uses
# NVRTC on the same sources). PTX lands in target/cuda-ptx.
compile_kernels() {
    local out=$work/cuda-ptx
    mkdir -p "$out"
    for cu in "$repo"/src/model/device/cuda/*.cu; do
        log "nvcc --ptx $(basename "$cu") (sm_$compute_cap)"
        "$cu13/bin/nvcc" --ptx -arch="sm_$compute_cap" --fmad=false -I "$repo/src/model/device/cuda" \
            -o "$out/$(basename "${cu%.cu}").ptx" "$cu"
    done
    log "PTX of $(ls "$out" | wc -l) kernel files in $out"
}

# LD_PRELOAD shim for a driver older than NVRTC: dfdx compiles some kernels at run time with
# whatever libnvrtc it finds (PyTorch's may be 13.2, which writes `.version 9.2` PTX), and a
# CUDA 13.0 driver (580) rejects PTX newer than ISA 9.0. These kernels use nothing newer, so
# the shim lowers the `.version` line to BERTLINE_PTX_ISA (e.g. 9.0) in cuModuleLoadData.
write_ptx_isa_shim() {
    cat >"$toolkit/stub/ptx_isa_compat.c" <<'C'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef int (*load_data_fn)(void **module, const void *image);

int cuModuleLoadData(void **module, const void *image) {
    static load_data_fn real;
    if (!real) real = (load_data_fn)dlsym(RTLD_NEXT, "cuModuleLoadData");
    const char *isa = getenv("BERTLINE_PTX_ISA"); /* "9.0" */
    const char *ptx = image;
    /* PTX is NUL-terminated text; cubins start with ELF magic, fatbins with 0x50ed55ba. */
    if (!isa || strlen(isa) != 3 || ptx[0] == 0x7f || (unsigned char)ptx[0] == 0x50)
        return real(module, image);
    const char *version = strstr(ptx, ".version ");
    if (!version || strncmp(version + 9, isa, 3) <= 0)
        return real(module, image);
    char *copy = strdup(ptx);
    if (!copy) return real(module, image);
    memcpy(copy + (version - ptx) + 9, isa, 3);
    int status = real(module, copy);
    free(copy);
    return status;
}
C
    gcc -shared -fPIC -O2 -o "$toolkit/lib/libptx_isa_compat.so" "$toolkit/stub/ptx_isa_compat.c" -ldl
}

# What gpu_check.sh needs on the GPU machine: the binaries, and the two include dirs whose
# absolute paths dfdx baked in (`env!("CUDA_INCLUDE_DIR")`, `env!("OUT_DIR")`) for NVRTC.
write_bundle() {
    local out_dir
    out_dir=$(ls -d "$target_dir"/release/build/dfdx-*/out | while read -r d; do
        ls "$d"/*.ptx >/dev/null 2>&1 && echo "$d"; done | head -1)
    [ -n "$out_dir" ] || { log "no dfdx OUT_DIR with .ptx files under $target_dir"; exit 1; }
    rm -rf "$bundle" && mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/include" "$bundle/dfdx-out"
    cp "$target_dir/release/bertline-pretrain" "$target_dir/release/bertline-finetune" "$bundle/bin/"
    cp "$parity_test" "$bundle/bin/hf_parity"
    cp "$kernels_test" "$bundle/bin/cuda_kernels"
    cp "$step_test" "$bundle/bin/gpu_step"
    strip "$bundle"/bin/* # the carry to a GPU machine is limited (64 MiB)
    cp "$toolkit/lib/libptx_isa_compat.so" "$bundle/lib/"
    cp "$out_dir"/*.cuh "$bundle/dfdx-out/"
    cp -r "$cu13/include/cuda_fp16.h" "$cu13/include/cuda_fp16.hpp" "$cu13/include/cuda_bf16.h" \
        "$cu13/include/cuda_bf16.hpp" "$cu13/include/vector_types.h" "$cu13/include/vector_functions.h" \
        "$cu13/include/vector_functions.hpp" "$cu13/include/nv" "$bundle/include/"
    cat >"$bundle/paths.env" <<PATHS
# Written by scripts/build_cuda.sh; read by scripts/gpu_check.sh.
CUDA_INCLUDE_DIR=$toolkit/include
DFDX_OUT_DIR=$out_dir
CUDA_COMPUTE_CAP=$compute_cap
PATHS
    for bin in "$bundle"/bin/*; do
        log "$(basename "$bin"): $(readelf -d "$bin" | grep -oE 'lib(cuda|nvrtc|cublas|cublasLt)\.so[.0-9]*' | tr '\n' ' ')"
    done
    log "bundle: $bundle ($(du -sh "$bundle" | cut -f1))"
}

install_toolchain
if [ "${1:-}" = "--ptx-only" ]; then
    compile_kernels
    exit 0
fi
assemble_toolkit
write_ptx_isa_shim
compile_kernels
build "$@"
write_bundle
