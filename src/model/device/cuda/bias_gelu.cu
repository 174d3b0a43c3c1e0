// Bias add + exact GELU after a bias-free cuBLAS product, and its backward.
// CPU reference: `host::bias_gelu` / `host::bias_gelu_backward` (src/model/device/host.rs).
#include "philox.cuh"

__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float normal_pdf(float x) { return expf(-0.5f * x * x) * 0.3989422804014327f; }

// pre = x + bias (kept for the backward pass), y = pre * Phi(pre); x, pre, y are [rows, cols].
extern "C" __global__ void bias_gelu_fwd(const unsigned int rows, const unsigned int cols, const float* x,
                                         const float* bias, float* pre, float* y) {
    const unsigned long long n = (unsigned long long)rows * cols;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float p = x[i] + bias[i % cols];
        pre[i] = p;
        y[i] = p * normal_cdf(p);
    }
}

// gpre = gy * GELU'(pre), written (the bias gradient is column_sums of it; the product's input
// gradient comes from cuBLAS with gpre).
extern "C" __global__ void bias_gelu_bwd(const unsigned int rows, const unsigned int cols, const float* pre,
                                         const float* gy, float* gpre) {
    const unsigned long long n = (unsigned long long)rows * cols;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float p = pre[i];
        gpre[i] = gy[i] * (normal_cdf(p) + p * normal_pdf(p));
    }
}

// out[c] += sum over rows of x[r, c]: one thread per column, rows in order (deterministic;
// adjacent threads read adjacent columns). Bias gradients.
extern "C" __global__ void column_sums(const unsigned int rows, const unsigned int cols, const float* x,
                                       float* out) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (unsigned int r = 0; r < rows; r++) acc += x[(unsigned long long)r * cols + c];
    out[c] += acc;
}
