// Inverted dropout with the Philox mask computed in the loop (no mask buffer).
// CPU reference: `Dropout::fill` / `cpu_dropout` (src/model/device/{philox,cpu}.rs).
#include "philox.cuh"

// out[i] = mask element i (for the GPU-vs-CPU mask test).
extern "C" __global__ void dropout_mask(const unsigned long long n, float* out, const DropoutParams d) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        out[i] = dropout_scale(d, i);
    }
}

// y = x * mask
extern "C" __global__ void dropout_fwd(const unsigned long long n, const float* x, float* y,
                                       const DropoutParams d) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        y[i] = x[i] * dropout_scale(d, i);
    }
}

// gx += gy * mask
extern "C" __global__ void dropout_bwd(const unsigned long long n, const float* gy, float* gx,
                                       const DropoutParams d) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        gx[i] += gy[i] * dropout_scale(d, i);
    }
}
