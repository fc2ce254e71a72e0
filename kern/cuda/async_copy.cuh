// cp.async (sm_80 and later): floats from global to shared memory without passing through
// registers, in groups; a thread reads what it copied only after async_wait_all. cudasim
// (KERN_CUDASIM) has its own three: each copy waits in its thread's queue until the wait, as
// on a GPU it may land at any time before it, so a read before the wait finds the old values.
#pragma once

#ifndef KERN_CUDASIM
// One float; 0 where !ok (nothing is read).
__device__ __forceinline__ void async_float(float* dst, const float* src, bool ok)
{
    const unsigned to = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(to), "l"(src), "r"(ok ? 4 : 0));
}

__device__ __forceinline__ void async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Every copy this thread has committed has landed.
__device__ __forceinline__ void async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }
#endif
