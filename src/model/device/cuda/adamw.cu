// AdamW as one fused update over the flat parameter / gradient / moment layout
// (src/optim.rs `FlatLayout`), and the global gradient norm as a two-pass reduction.
// CPU reference: `optim::adamw_fused` / `AdamWStep::apply` and `ParamGrads::global_norm`.
// Compiled with --fmad=false (src/model/device/cuda.rs), so each operation rounds as on the
// CPU and the update matches the CPU's bit for bit.
#include "philox.cuh"

// The scalars of one step (the Rust side's `AdamWStepParams`, #[repr(C)]).
struct AdamWStepParams {
    float step_size;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float bias_correction2_sqrt;
    float eps;
    float decay;
    float grad_scale;
    unsigned int has_grad_scale;
};

// Parameter i of `offsets` (n_params + 1 entries) holding element `e`.
__device__ __forceinline__ unsigned int param_of(const unsigned long long* offsets, unsigned int n_params,
                                                 unsigned long long e) {
    unsigned int lo = 0, hi = n_params;  // offsets[lo] <= e < offsets[hi]
    while (hi - lo > 1) {
        const unsigned int mid = (lo + hi) / 2;
        if (offsets[mid] <= e) lo = mid; else hi = mid;
    }
    return lo;
}

extern "C" __global__ void adamw_fused(const unsigned long long n, float* params, const float* grads,
                                       float* exp_avg, float* exp_avg_sq, const unsigned long long* offsets,
                                       const unsigned char* decays, const unsigned int n_params,
                                       const AdamWStepParams s) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float g = grads[i];
        if (s.has_grad_scale) g = g * s.grad_scale;
        float p = params[i];
        if (decays[param_of(offsets, n_params, i)]) p = p * s.decay;
        float m = exp_avg[i];
        float v = exp_avg_sq[i];
        m = m + s.one_minus_beta1 * (g - m);
        v = s.beta2 * v + s.one_minus_beta2 * g * g;
        const float denom = sqrtf(v) / s.bias_correction2_sqrt + s.eps;
        p = p - s.step_size * m / denom;
        params[i] = p;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
    }
}

// partials[block] = sum of x[i]^2 over the block's grid-stride elements, in f64.
extern "C" __global__ void sum_squares_partial(const unsigned long long n, const float* x, double* partials) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const double v = x[i];
        acc += v * v;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += scratch[w];
        partials[blockIdx.x] = t;
    }
}

// out[0] = sqrt(sum of partials), one thread, in order (deterministic).
extern "C" __global__ void finish_norm(const unsigned int n, const double* partials, double* out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double t = 0.0;
    for (unsigned int i = 0; i < n; i++) t += partials[i];
    out[0] = sqrt(t);
}
