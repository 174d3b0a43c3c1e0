# Sourced by scripts/gpu_check.sh and scripts/gpu_pretrain.sh on the GPU machine: makes the
# CUDA build in target/cuda-bundle (scripts/build_cuda.sh) runnable there. It
#   - recreates the two include dirs whose absolute paths dfdx baked in for NVRTC;
#   - puts the directory holding libcublas.so.13 / libnvrtc.so.13 on LD_LIBRARY_PATH
#     (PyTorch's nvidia-* wheels, or BERTLINE_CUDA_LIBS);
#   - caps the PTX ISA of run-time compiled kernels at the driver's (BERTLINE_PTX_ISA, the
#     bundle's LD_PRELOAD shim). `unset LD_PRELOAD` before running anything else (Python).
# Exports BERTLINE_CUDA_PRELOAD (the shim's path) for callers that unset and reset it.

bundle=${BERTLINE_CUDA_BUNDLE:-target/cuda-bundle}

gpu_say() { echo "gpu: $*" >&2; }

[ -f "$bundle/paths.env" ] || { gpu_say "no $bundle/paths.env: run scripts/build_cuda.sh and carry $bundle"; return 1; }
# shellcheck disable=SC1091
source "$bundle/paths.env"

# NVRTC reads headers from the absolute paths baked into the binary at build time.
install_baked_include_dirs() {
    mkdir -p "$CUDA_INCLUDE_DIR" "$DFDX_OUT_DIR"
    cp -r "$bundle"/include/. "$CUDA_INCLUDE_DIR"/
    cp "$bundle"/dfdx-out/*.cuh "$DFDX_OUT_DIR"/
}

# Directory holding libcublas.so.13 and libnvrtc.so.13 (PyTorch's wheels put them together).
find_cuda_libs() {
    if [ -n "${BERTLINE_CUDA_LIBS:-}" ]; then echo "$BERTLINE_CUDA_LIBS"; return; fi
    python3 - <<'PY' 2>/dev/null && return
import glob, os, nvidia
for root in nvidia.__path__:
    hits = glob.glob(os.path.join(root, "**", "libcublas.so.13"), recursive=True)
    if hits:
        print(os.path.dirname(hits[0]))
        break
else:
    raise SystemExit(1)
PY
    dirname "$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)"
}

# The driver's CUDA version (13.0 for driver 580) -> the newest PTX ISA it accepts (9.0).
driver_ptx_isa() {
    local version
    version=$(nvidia-smi | grep -oE 'CUDA Version: [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+')
    case "$version" in
        13.*) echo "9.${version#13.}" ;;
        *) echo "" ;;
    esac
}

# run_json NAME TIMEOUT COMMAND...: runs COMMAND under TIMEOUT and appends the JSON lines it
# prints to $results (a failure adds {"check": NAME, "failed": STATUS}); the output goes to stderr.
run_json() {
    local name=$1 limit=$2
    shift 2
    gpu_say "$name"
    local log
    log=$(mktemp)
    timeout "$limit" "$@" >"$log" 2>&1
    local status=$?
    # libtest prints "test NAME ... " before a test's own output, so match anywhere in the line.
    grep -oE '\{".*\}' "$log" >>"$results"
    tail -5 "$log" >&2
    if [ "$status" -ne 0 ]; then
        gpu_say "$name failed (exit $status); last lines:"
        tail -20 "$log" >&2
        echo "{\"check\": \"$name\", \"failed\": $status}" >>"$results"
    fi
    rm -f "$log"
    return "$status"
}

nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv >&2
install_baked_include_dirs
cuda_libs=$(find_cuda_libs)
[ -f "$cuda_libs/libcublas.so.13" ] || { gpu_say "no libcublas.so.13 found: set BERTLINE_CUDA_LIBS"; return 1; }
export LD_LIBRARY_PATH="$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BERTLINE_PTX_ISA=$(driver_ptx_isa)
export BERTLINE_PTX_ISA
export BERTLINE_CUDA_PRELOAD="$PWD/$bundle/lib/libptx_isa_compat.so"
export LD_PRELOAD="$BERTLINE_CUDA_PRELOAD"
gpu_say "CUDA libs: $cuda_libs; PTX ISA capped at ${BERTLINE_PTX_ISA:-none}; sm_$CUDA_COMPUTE_CAP kernels"
