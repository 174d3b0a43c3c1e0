// LayerNorm(dropout(x) + residual) per row, statistics in f32, and its backward.
// One block per row. CPU reference: `cpu_layer_norm` (src/model/device/cpu.rs) through
// `host::residual_layer_norm` (src/model/device/host.rs).
#include "philox.cuh"

// z = x * mask + residual (residual may be null); xhat = (z - mean) * rstd; y = xhat * gamma + beta.
// Dropout element index = row * cols + col, as on the CPU.
extern "C" __global__ void residual_layer_norm_fwd(const unsigned int rows, const unsigned int cols,
                                                   const float* x, const float* residual,
                                                   const float* gamma, const float* beta, const float eps,
                                                   const DropoutParams d, float* xhat, float* rstd_out,
                                                   float* y) {
    __shared__ float scratch[32];
    const unsigned int row = blockIdx.x;
    if (row >= rows) return;
    const unsigned long long base = (unsigned long long)row * cols;
    float sum = 0.0f;
    for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
        float z = x[base + c] * dropout_scale(d, base + c);
        if (residual) z += residual[base + c];
        xhat[base + c] = z;
        sum += z;
    }
    const float mean = block_sum(sum, scratch) / cols;
    float sq = 0.0f;
    for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float dv = xhat[base + c] - mean;
        sq += dv * dv;
    }
    const float var = block_sum(sq, scratch) / cols;
    const float rstd = 1.0f / sqrtf(var + eps);
    if (threadIdx.x == 0) rstd_out[row] = rstd;
    for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float h = (xhat[base + c] - mean) * rstd;
        xhat[base + c] = h;
        y[base + c] = h * gamma[c] + beta[c];
    }
}

// dz = rstd (gy gamma - mean(gy gamma) - xhat mean(gy gamma xhat)); gresidual += dz (if not
// null); gx += dz * mask.
extern "C" __global__ void residual_layer_norm_bwd(const unsigned int rows, const unsigned int cols,
                                                   const float* gy, const float* xhat, const float* rstd,
                                                   const float* gamma, const DropoutParams d, float* gx,
                                                   float* gresidual) {
    __shared__ float scratch[32];
    const unsigned int row = blockIdx.x;
    if (row >= rows) return;
    const unsigned long long base = (unsigned long long)row * cols;
    float a = 0.0f, b = 0.0f;
    for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = gy[base + c] * gamma[c];
        a += g;
        b += g * xhat[base + c];
    }
    a = block_sum(a, scratch) / cols;
    b = block_sum(b, scratch) / cols;
    const float r = rstd[row];
    for (unsigned int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float dz = r * (gy[base + c] * gamma[c] - a - xhat[base + c] * b);
        if (gresidual) gresidual[base + c] += dz;
        gx[base + c] += dz * dropout_scale(d, base + c);
    }
}

// ggamma[c] += sum_r gy xhat; gbeta[c] += sum_r gy: one thread per column, rows in order.
extern "C" __global__ void layer_norm_param_grads(const unsigned int rows, const unsigned int cols,
                                                  const float* gy, const float* xhat, float* ggamma,
                                                  float* gbeta) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float dg = 0.0f, db = 0.0f;
    for (unsigned int r = 0; r < rows; r++) {
        const unsigned long long i = (unsigned long long)r * cols + c;
        dg += gy[i] * xhat[i];
        db += gy[i];
    }
    ggamma[c] += dg;
    gbeta[c] += db;
}
