// Philox-4x32-10 and the dropout mask on the GPU: the same function as
// src/model/device/philox.rs, so a mask element drawn here equals the CPU's bit for bit.
//
//   key     = [seed lo, seed hi]
//   counter = [block lo, block hi, site, step], block = index / 4
//   word    = output word (index % 4) of philox4x32_10(counter, key)
//   scale   = word < threshold ? 0 : keep_scale      (threshold = floor(prob * 2^32))
#pragma once

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// -infinity without <math.h> (NVRTC has no INFINITY macro built in).
#define NEG_INF __int_as_float(0xff800000)

// One dropout mask, passed by value (the Rust side's `DropoutParams`, #[repr(C)]).
// threshold 0 and keep_scale 1 is "no dropout".
struct DropoutParams {
    unsigned int seed_lo;
    unsigned int seed_hi;
    unsigned int step;
    unsigned int site;
    unsigned int threshold;
    float keep_scale;
};

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k.x += PHILOX_W0;
            k.y += PHILOX_W1;
        }
        const unsigned int hi0 = __umulhi(PHILOX_M0, c.x);
        const unsigned int lo0 = PHILOX_M0 * c.x;
        const unsigned int hi1 = __umulhi(PHILOX_M1, c.z);
        const unsigned int lo1 = PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// The random word of mask element `index`.
__device__ __forceinline__ unsigned int dropout_word(const DropoutParams d, unsigned long long index) {
    const unsigned long long block = index >> 2;
    const uint4 ctr = make_uint4((unsigned int)block, (unsigned int)(block >> 32), d.site, d.step);
    const uint4 w = philox4x32_10(ctr, make_uint2(d.seed_lo, d.seed_hi));
    switch (index & 3) {
        case 0: return w.x;
        case 1: return w.y;
        case 2: return w.z;
        default: return w.w;
    }
}

// Mask element `index`: 0 (dropped) or keep_scale.
__device__ __forceinline__ float dropout_scale(const DropoutParams d, unsigned long long index) {
    if (d.threshold == 0) {
        return d.keep_scale;
    }
    return dropout_word(d, index) < d.threshold ? 0.0f : d.keep_scale;
}

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024);
// `scratch` holds 32 floats. Every thread gets the sum. Fixed order: deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? scratch[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide maximum, as block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? scratch[lane] : NEG_INF;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
