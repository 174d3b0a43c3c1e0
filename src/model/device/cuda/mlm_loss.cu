// The MLM loss over gathered positions: the rows of the masked positions are gathered from the
// encoder output, the decoder (cuBLAS) gives their logits, and these kernels compute each row's
// log-probability of its label and whether the label is the row's maximum, and the backward.
// CPU reference: `BertDevice::label_log_probs` for Cpu (src/model/device/cpu.rs) through
// `host::label_log_probs` (src/model/device/host.rs).
#include "philox.cuh"

// out[r, :] = x[index[r], :]
extern "C" __global__ void gather_rows(const unsigned int n, const unsigned int cols, const float* x,
                                       const unsigned int* index, float* out) {
    const unsigned long long total = (unsigned long long)n * cols;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long r = i / cols, c = i % cols;
        out[i] = x[(unsigned long long)index[r] * cols + c];
    }
}

// gx[index[r], :] += gout[r, :], rows in order by one thread per column (indices may repeat;
// no atomics, so the sum is deterministic).
extern "C" __global__ void scatter_add_rows(const unsigned int n, const unsigned int cols, const float* gout,
                                            const unsigned int* index, float* gx) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    for (unsigned int r = 0; r < n; r++) gx[(unsigned long long)index[r] * cols + c] += gout[(unsigned long long)r * cols + c];
}

// One block per row: lse = logsumexp(row); logprob = row[label] - lse; is_max = row[label] >= max.
extern "C" __global__ void label_log_probs_fwd(const unsigned int rows, const unsigned int cols,
                                               const float* logits, const unsigned int* labels,
                                               float* logprob, float* lse_out, unsigned char* is_max) {
    __shared__ float scratch[32];
    const unsigned int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + (unsigned long long)r * cols;
    float m = NEG_INF;
    for (unsigned int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (unsigned int j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(x[j] - m);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        const float lse = m + logf(sum);
        const float at = x[labels[r]];
        lse_out[r] = lse;
        logprob[r] = at - lse;
        is_max[r] = at >= m ? 1 : 0;
    }
}

// gx[r, j] += gout[r] * ([j == label] - exp(x[r, j] - lse[r])).
extern "C" __global__ void label_log_probs_bwd(const unsigned int rows, const unsigned int cols,
                                               const float* logits, const float* lse,
                                               const unsigned int* labels, const float* gout, float* gx) {
    const unsigned long long n = (unsigned long long)rows * cols;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int r = i / cols, j = i % cols;
        const float g = gout[r];
        float v = -g * expf(logits[i] - lse[r]);
        if (j == labels[r]) v += g;
        gx[i] += v;
    }
}
