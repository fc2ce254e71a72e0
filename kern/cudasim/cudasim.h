// cudasim: CUDA's built-ins for C++17 on the CPU, prepended to the unchanged kern/cuda/*.cu.
//
// A launch runs the grid's blocks one after another; inside a block every CUDA thread is a
// fiber (ucontext) with its own stack, so __syncthreads is a real barrier: the scheduler runs
// one warp at a time, each fiber until it reaches a barrier (or a warp collective, or its
// end), the warp's collectives resolved as they complete, until the whole warp waits at a
// block barrier or has returned; then the next warp; then it releases the barrier when every
// thread of the block waits at that same one. Shared memory is per block
// and filled with NaN bytes before each block. Faults are caught and reported with the block
// and thread (kern/cudasim/device.py adds the source line and the argument's name).
#pragma once

#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <cmath>
#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>

// ---- qualifiers ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __constant__ static
// Every __shared__ variable lives in one section of this module: poisoned before each block.
#define __shared__ static __attribute__((section("cudasim_shared"), aligned(16)))

// ---- vector and index types ---------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace cudasim {

enum State { READY, AT_BARRIER, AT_WARP, DONE };
enum Collective { SHFL, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL, SYNCWARP };

// A fiber's saved state. On x86-64 a hand-written switch (callee-saved registers, the stack
// pointer, MXCSR and the x87 control word: what a function call must preserve) is about 20x
// cheaper than swapcontext, which also saves the signal mask with a system call.
#if defined(__x86_64__)
struct Context { void* sp; };
extern "C" void cudasim_switch(void** save, void* next);
asm(R"(
    .text
    .p2align 4
    .type cudasim_switch, @function
cudasim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cudasim_switch, .-cudasim_switch
)");
inline void switch_to(Context* save, Context* next) { cudasim_switch(&save->sp, next->sp); }
// A new fiber's stack: what cudasim_switch pops, then `entry` as the return address.
inline void start_context(Context* c, char* stack, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                   // entry's return address: never used (fibers switch away)
    *--sp = (uint64_t)entry;     // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    uint32_t control[2];
    __asm__ volatile("stmxcsr %0" : "=m"(control[0]));
    __asm__ volatile("fnstcw %0" : "=m"(control[1]));
    *--sp = (uint64_t)control[0] | ((uint64_t)(control[1] & 0xffff) << 32);
    c->sp = sp;
}
#else
struct Context { ucontext_t uc; };
inline void switch_to(Context* save, Context* next) { swapcontext(&save->uc, &next->uc); }
inline void start_context(Context* c, char* stack, size_t size, void (*entry)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, entry, 0);
}
#endif

struct Fiber {
    Context context;
    uint3 thread;
    int index;        // linear index in the block
    State state;
    int line;         // of the barrier or collective it waits at
    const char* what; // its name, for messages
    // A barrier's predicate, or a collective's operands and result.
    int predicate;
    Collective op;
    unsigned mask;
    long long operand;  // srcLane, delta or laneMask
    int width;
    uint64_t value, result;
    // cp.async copies issued and not yet waited for (async_float, async_wait_all).
    struct { float* dst; const float* src; bool ok; } pending[32];
    int pending_count;
};

struct Range { uintptr_t start, end; };  // an argument's allocation; a guard page follows

struct Launch {
    void (*trampoline)(void**);
    void** args;
    dim3 grid, block;
    uint3 block_index;
    int threads;
    bool reverse;
    Fiber* fibers;
    char* stacks;
    size_t stack_size;
    Context scheduler;
    char* dynamic_shared;
    size_t dynamic_bytes;
    int barrier_result;
    // Errors: a message, or a fault caught by the signal handler.
    char* error;
    size_t error_len;
    sigjmp_buf escape;
    int fault_signal;
    uintptr_t fault_address, fault_pc;
    int fault_thread;
};

inline thread_local Launch* launch = nullptr;
inline thread_local Fiber* current = nullptr;

inline void fail(const char* format, ...) {
    Launch* l = launch;
    int n = snprintf(l->error, l->error_len, "block (%u, %u, %u), thread (%u, %u, %u): ",
                     l->block_index.x, l->block_index.y, l->block_index.z,
                     current ? current->thread.x : 0, current ? current->thread.y : 0,
                     current ? current->thread.z : 0);
    va_list rest;
    va_start(rest, format);
    if (n >= 0 && (size_t)n < l->error_len) vsnprintf(l->error + n, l->error_len - n, format, rest);
    va_end(rest);
}

// A fiber stops here for good: back to the scheduler, which sees the error and ends the launch.
[[noreturn]] inline void trap_here() {
    current->state = DONE;
    switch_to(&current->context, &launch->scheduler);
    abort();  // never resumed
}

inline void wait(State state, int line, const char* what) {
    current->state = state;
    current->line = line;
    current->what = what;
    switch_to(&current->context, &launch->scheduler);
}

// The barrier's kind is in its name (`what`); release_barrier computes the result.
inline int barrier(int predicate, int line, const char* what) {
    current->predicate = predicate != 0;
    wait(AT_BARRIER, line, what);
    return launch->barrier_result;
}

inline int lane_of(const Fiber* f) { return f->index % 32; }

template <typename T>
inline uint64_t bits_of(T v) {
    static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

inline uint64_t collective(Collective op, unsigned mask, uint64_t value, long long operand, int width,
                           int line, const char* what) {
    if (!(mask & (1u << lane_of(current)))) {
        fail("%s at line %d: the calling lane %d is not in the mask 0x%08x", what, line,
             lane_of(current), mask);
        trap_here();
    }
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        fail("%s at line %d: width %d is not a power of two up to 32", what, line, width);
        trap_here();
    }
    current->op = op;
    current->mask = mask;
    current->value = value;
    current->operand = operand;
    current->width = width;
    wait(AT_WARP, line, what);
    return current->result;
}

}  // namespace cudasim

// ---- built-in variables -------------------------------------------------------------------
#define threadIdx (cudasim::current->thread)
#define blockIdx (cudasim::launch->block_index)
#define blockDim (cudasim::launch->block)
#define gridDim (cudasim::launch->grid)
#define warpSize 32

// ---- cp.async (kern/cuda/async_copy.cuh) ------------------------------------------------------
// Each copy waits in its thread's queue until async_wait_all: on a GPU it may land at any time
// before the wait, so a read of the destination before the wait finds what was there (NaN in
// fresh shared memory).
#define KERN_CUDASIM 1

inline void async_float(float* dst, const float* src, bool ok) {
    cudasim::Fiber* f = cudasim::current;
    if (f->pending_count == 32) {
        cudasim::fail("more than 32 cp.async copies in flight in one thread (async_wait_all missing?)");
        cudasim::trap_here();
    }
    f->pending[f->pending_count++] = {dst, src, ok};
}

inline void async_commit() {}

inline void async_wait_all() {
    cudasim::Fiber* f = cudasim::current;
    for (int i = 0; i < f->pending_count; ++i) *f->pending[i].dst = f->pending[i].ok ? *f->pending[i].src : 0.f;
    f->pending_count = 0;
}

// ---- barriers, warp collectives -------------------------------------------------------------
#define __syncthreads() cudasim::barrier(1, __LINE__, "__syncthreads")
#define __syncthreads_count(p) cudasim::barrier((p), __LINE__, "__syncthreads_count")
#define __syncthreads_and(p) cudasim::barrier((p), __LINE__, "__syncthreads_and")
#define __syncthreads_or(p) cudasim::barrier((p), __LINE__, "__syncthreads_or")
#define __syncwarp(...) cudasim::SyncWarp{__LINE__}(__VA_ARGS__)  // mask optional: no comma to elide
#define __shfl_sync(mask, v, lane, ...) cudasim::shfl(cudasim::SHFL, mask, v, lane, __LINE__, "__shfl_sync", ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) cudasim::shfl(cudasim::SHFL_UP, mask, v, d, __LINE__, "__shfl_up_sync", ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) cudasim::shfl(cudasim::SHFL_DOWN, mask, v, d, __LINE__, "__shfl_down_sync", ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) cudasim::shfl(cudasim::SHFL_XOR, mask, v, m, __LINE__, "__shfl_xor_sync", ##__VA_ARGS__)
#define __ballot_sync(mask, p) ((unsigned)cudasim::collective(cudasim::BALLOT, mask, (p) != 0, 0, 32, __LINE__, "__ballot_sync"))
#define __any_sync(mask, p) ((int)cudasim::collective(cudasim::ANY, mask, (p) != 0, 0, 32, __LINE__, "__any_sync"))
#define __all_sync(mask, p) ((int)cudasim::collective(cudasim::ALL, mask, (p) != 0, 0, 32, __LINE__, "__all_sync"))
#define __activemask() cudasim::activemask()

namespace cudasim {
inline void syncwarp(int line, unsigned mask = 0xffffffffu) {
    collective(SYNCWARP, mask, 0, 0, 32, line, "__syncwarp");
}
struct SyncWarp {
    int line;
    void operator()(unsigned mask = 0xffffffffu) const { syncwarp(line, mask); }
};

template <typename T>
inline T shfl(Collective op, unsigned mask, T v, long long operand, int line, const char* what,
              int width = 32) {
    return from_bits<T>(collective(op, mask, bits_of(v), operand, width, line, what));
}

// Lanes of this warp that have not returned (the simulator has no notion of a branch's lanes).
inline unsigned activemask() {
    unsigned mask = 0;
    int first = current->index - lane_of(current);
    for (int i = first; i < std::min(first + 32, launch->threads); ++i)
        if (launch->fibers[i].state != DONE) mask |= 1u << (i - first);
    return mask;
}
}  // namespace cudasim

// ---- device functions -----------------------------------------------------------------------
#undef assert
#define assert(c) ((c) ? (void)0 : (cudasim::fail("assert(%s) failed at line %d", #c, __LINE__), cudasim::trap_here()))
#define __trap() (cudasim::fail("__trap() at line %d", __LINE__), cudasim::trap_here())

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
// Rounded once each, never contracted into a multiply-add (the compiler runs without -ffast-math).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __ldg(const float* p) { return *p; }
using std::max;
using std::min;
inline long long max(long long a, int b) { return a > b ? a : b; }
inline long long max(int a, long long b) { return a > b ? a : b; }
inline long long min(long long a, int b) { return a < b ? a : b; }
inline long long min(int a, long long b) { return a < b ? a : b; }
inline unsigned max(unsigned a, int b) { return (long long)a > b ? a : (unsigned)b; }
inline unsigned min(unsigned a, int b) { return (long long)a < b ? a : (unsigned)b; }

// Atomics: the fibers of a launch run on one OS thread, one at a time.
template <typename T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <typename T> inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <typename T> inline T atomicMin(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
template <typename T> inline T atomicMax(T* p, T v) { T old = *p; *p = v > old ? v : old; return old; }
template <typename T> inline T atomicAnd(T* p, T v) { T old = *p; *p = old & v; return old; }
template <typename T> inline T atomicOr(T* p, T v) { T old = *p; *p = old | v; return old; }
template <typename T> inline T atomicXor(T* p, T v) { T old = *p; *p = old ^ v; return old; }
template <typename T> inline T atomicCAS(T* p, T compare, T v) { T old = *p; if (old == compare) *p = v; return old; }
inline unsigned atomicInc(unsigned* p, unsigned limit) { unsigned old = *p; *p = old >= limit ? 0 : old + 1; return old; }
inline unsigned atomicDec(unsigned* p, unsigned limit) { unsigned old = *p; *p = (old == 0 || old > limit) ? limit : old - 1; return old; }

// Dynamic shared memory (`extern __shared__ T name[];`, rewritten by kern/cudasim/compiler.py).
inline void* cudasim_dynamic_shared() { return cudasim::launch->dynamic_shared; }

// The runtime (scheduler, signal handling, the exported launch function) follows the kernels.
