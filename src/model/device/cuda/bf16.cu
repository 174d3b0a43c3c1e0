// f32 <-> bf16 for mixed precision: round to nearest even, NaN kept quiet. Written with bit
// operations (no cuda_bf16.h), the same as the CPU's `host::f32_to_bf16` / `bf16_to_f32`.
#include "philox.cuh"

__device__ __forceinline__ unsigned short f32_to_bf16_bits(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

extern "C" __global__ void f32_to_bf16(const unsigned long long n, const float* x, unsigned short* y) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        y[i] = f32_to_bf16_bits(x[i]);
    }
}

extern "C" __global__ void bf16_to_f32(const unsigned long long n, const unsigned short* x, float* y) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        y[i] = __uint_as_float(((unsigned int)x[i]) << 16);
    }
}
