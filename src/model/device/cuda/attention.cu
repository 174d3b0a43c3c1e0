// The attention core between cuBLAS's two batched products: masked softmax of the scores with
// dropout of the probabilities, and its backward. One block per (sequence, head, query) row of
// s scores; scores come as [b * heads, s, s], already scaled by 1/sqrt(d).
// CPU reference: `AttentionShape::forward/backward` (src/model/device/cpu.rs) through
// `host::masked_softmax_dropout` (src/model/device/host.rs).
#include "philox.cuh"

// probs = softmax(scores + key_bias[b, :]) in place (f32 max and sum); dropped = probs * mask,
// mask element index (task * s + i) * s + j as on the CPU.
extern "C" __global__ void masked_softmax_dropout_fwd(const unsigned int tasks, const unsigned int heads,
                                                      const unsigned int s, float* scores_probs,
                                                      const float* key_bias, const DropoutParams d,
                                                      float* dropped) {
    __shared__ float scratch[32];
    const unsigned long long row = blockIdx.x;  // task * s + i
    if (row >= (unsigned long long)tasks * s) return;
    const unsigned int task = row / s;
    const unsigned int b = task / heads;
    float* p = scores_probs + row * s;
    const float* kb = key_bias + (unsigned long long)b * s;
    float m = NEG_INF;
    for (unsigned int j = threadIdx.x; j < s; j += blockDim.x) {
        const float v = p[j] + kb[j];
        p[j] = v;
        m = fmaxf(m, v);
    }
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (unsigned int j = threadIdx.x; j < s; j += blockDim.x) {
        const float e = expf(p[j] - m);
        p[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, scratch);
    for (unsigned int j = threadIdx.x; j < s; j += blockDim.x) {
        const float v = p[j] * inv;
        p[j] = v;
        dropped[row * s + j] = v * dropout_scale(d, row * s + j);
    }
}

// From the gradient of the dropped probabilities (dO Vᵀ): dP = g_dropped * mask,
// dS = P * (dP - sum_j dP P), written over g_dropped (the scale 1/sqrt(d) goes into the
// products that follow).
extern "C" __global__ void masked_softmax_dropout_bwd(const unsigned int tasks, const unsigned int s,
                                                      const float* probs, float* g_dropped_scores,
                                                      const DropoutParams d) {
    __shared__ float scratch[32];
    const unsigned long long row = blockIdx.x;
    if (row >= (unsigned long long)tasks * s) return;
    const float* p = probs + row * s;
    float* g = g_dropped_scores + row * s;
    float dot = 0.0f;
    for (unsigned int j = threadIdx.x; j < s; j += blockDim.x) {
        const float dp = g[j] * dropout_scale(d, row * s + j);
        g[j] = dp;
        dot += dp * p[j];
    }
    dot = block_sum(dot, scratch);
    for (unsigned int j = threadIdx.x; j < s; j += blockDim.x) g[j] = p[j] * (g[j] - dot);
}
