// Block-wide reductions for blocks of REDUCE_THREADS threads (a power of two, a -D define from
// kern/cuda/sources.py): a tree over `partial` (REDUCE_THREADS floats of shared memory), always
// in the same order, so sums repeat bit for bit (no float atomics).
#pragma once

struct Sum {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Every thread's `value` combined by `op`; every thread gets the result, and `partial` may be
// used again afterwards.
template <class Op>
__device__ float block_reduce(float value, float* partial, Op op) {
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = REDUCE_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] = op(partial[threadIdx.x], partial[threadIdx.x + half]);
        __syncthreads();
    }
    const float total = partial[0];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_sum(float value, float* partial) { return block_reduce(value, partial, Sum()); }
__device__ __forceinline__ float block_max(float value, float* partial) { return block_reduce(value, partial, Max()); }
