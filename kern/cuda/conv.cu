// Convolution, NCHW float32, batchnorm folded into w and bias on the host.
// x (N, C, H, W); w (F, C/groups, KH, KW); y (N, F, OH, OW); y = act(conv(x, w) + bias). The
// kernel may be KH x KW with padding (pad_h, pad_w): Caffe's 1x7 and 7x1 (Inception) run as they are.
// Image b of x starts at x + b * x_image and image b of y at y + b * y_image: C*H*W and
// F*OH*OW for whole arrays, more where x or y is a channel slice of a route's output
// (nets/memory.py places a route's inputs there, so the route copies nothing).
// Fused residual (a shortcut after the convolution): with res_act >= 0,
// y = res_act(act(conv(x, w) + bias) + residual), residual of y's shape; with res_act < 0
// `residual` is not read (pass any array, e.g. y).
#include "activation.cuh"

// The store of every output: activation, then the fused shortcut where there is one.
__device__ __forceinline__ float epilogue(float v, int act, const float* __restrict__ residual,
                                          int res_act, long long at)
{
    v = activate(v, act);
    return res_act < 0 ? v : activate(v + residual[at], res_act);
}

// Kernel 1: one thread per output element (n, f, oy, ox): the definition, as loops.
// Consecutive threads take consecutive ox, so the stores (and most loads) are coalesced.
extern "C" __global__ void conv2d_direct(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, int n, int c, int h, int wd, int f, int kh, int kw, int stride, int pad_h, int pad_w,
    int groups, int oh, int ow, long long x_image, long long y_image, int act,
    const float* __restrict__ residual, int res_act)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * f * oh * ow) return;
    const int ox = idx % ow;
    long long t = idx / ow;
    const int oy = t % oh;
    t /= oh;
    const int fo = t % f;
    const long long b = t / f;
    const int cg = c / groups;
    const int g = fo / (f / groups);
    const float* wf = w + (long long)fo * cg * kh * kw;
    float acc = 0.f;
    for (int ci = 0; ci < cg; ++ci) {
        const float* plane = x + b * x_image + (long long)(g * cg + ci) * h * wd;
        for (int ky = 0; ky < kh; ++ky) {
            const int iy = oy * stride - pad_h + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kw; ++kx) {
                const int ix = ox * stride - pad_w + kx;
                if (ix < 0 || ix >= wd) continue;
                acc += wf[(ci * kh + ky) * kw + kx] * plane[iy * wd + ix];
            }
        }
    }
    y[b * y_image + ((long long)fo * oh + oy) * ow + ox] = epilogue(acc + bias[fo], act, residual, res_act, idx);
}

// Kernel 2: implicit GEMM with shared-memory tiles. Per group g, the output is the product
// (filters x taps) @ (taps x pixels), pixels running over the whole batch; the taps x pixels
// operand is never stored: each tile of it is gathered from x (im2col on the fly).
// A block of 256 threads computes TILE_M filters x TILE_N pixels; thread (ty, tx) of the
// 16 x 16 grid owns filters ty + 16*i and pixels tx + 16*j (i, j < 4): 16 accumulators in
// registers. Each step stages TILE_K taps of both operands in shared memory.
#ifndef TILE_M
#define TILE_M 64
#endif
#ifndef TILE_N
#define TILE_N 64
#endif
#ifndef TILE_K
#define TILE_K 16
#endif
#define THREADS 256

extern "C" __global__ void __launch_bounds__(THREADS) conv2d_implicit_gemm(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, int n, int c, int h, int wd, int f, int kh, int kw, int stride, int pad_h, int pad_w,
    int groups, int oh, int ow, long long x_image, long long y_image, int act,
    const float* __restrict__ residual, int res_act)
{
    __shared__ float a_tile[TILE_K][TILE_M];
    __shared__ float b_tile[TILE_K][TILE_N];
    const int cg = c / groups, fg = f / groups, taps = cg * kh * kw;
    const int pixels = n * oh * ow, plane = oh * ow;
    const int g = blockIdx.z, m0 = blockIdx.y * TILE_M, p0 = blockIdx.x * TILE_N;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {{0.f}};
    for (int k0 = 0; k0 < taps; k0 += TILE_K) {
        for (int i = threadIdx.x; i < TILE_M * TILE_K; i += THREADS) {
            const int m = i / TILE_K, kk = i % TILE_K;  // consecutive threads: consecutive taps
            const int fo = m0 + m, tap = k0 + kk;
            a_tile[kk][m] = (fo < fg && tap < taps) ? w[(long long)(g * fg + fo) * taps + tap] : 0.f;
        }
        for (int i = threadIdx.x; i < TILE_K * TILE_N; i += THREADS) {
            const int kk = i / TILE_N, pp = i % TILE_N;  // consecutive threads: consecutive pixels
            const int tap = k0 + kk, p = p0 + pp;
            float v = 0.f;
            if (tap < taps && p < pixels) {
                const int ci = tap / (kh * kw), r = tap % (kh * kw);
                const int b = p / plane, q = p % plane;
                const int iy = (q / ow) * stride - pad_h + r / kw, ix = (q % ow) * stride - pad_w + r % kw;
                if (iy >= 0 && iy < h && ix >= 0 && ix < wd)
                    v = x[b * x_image + ((long long)(g * cg + ci) * h + iy) * wd + ix];
            }
            b_tile[kk][pp] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = a_tile[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = b_tile[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * bv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int fo = m0 + ty + 16 * i;
        if (fo >= fg) continue;
        const float bias_f = bias[g * fg + fo];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int p = p0 + tx + 16 * j;
            if (p >= pixels) continue;
            const int b = p / plane, q = p % plane;
            const long long at = ((long long)b * f + g * fg + fo) * plane + q;  // in residual
            y[b * y_image + (long long)(g * fg + fo) * plane + q] =
                epilogue(acc[i][j] + bias_f, act, residual, res_act, at);
        }
    }
}

// Kernel 3: the implicit GEMM for large layers (Hopper-class GPUs), beside kernel 2 so that the
// steps stay readable. What changes:
// - 128 x 128 block tiles and 8 x 8 outputs per thread: per tap a thread reads 8 + 8 values
//   from shared memory for 64 multiply-adds (kernel 2: 4 + 4 for 16).
// - Double buffering: the next step's tiles are loaded from global memory into registers
//   while this step computes from shared memory, then stored to the other buffer: one
//   __syncthreads per step, and the loads' latency hidden behind the arithmetic.
// - float4 loads of the weights when a filter's taps start 16-byte aligned (taps % 4 == 0).
// - No division in the loop: each thread gathers the same pixel at every step, whose image
//   and window corner are computed once, and each tap's (channel, ky, kx) comes from
//   tap_table, made on the host: channel << 12 | ky << 6 | kx (channels < 2^19, k <= 64).
// Thread (ty, tx) of the 16 x 16 grid owns rows ty*4 + {0..3} and 64 + ty*4 + {0..3}, and the
// same columns with tx.
// With KERN_CP_ASYNC (sm_80 and later, or cudasim; CudaBackend(cp_async=True)) the next step's
// operands go from global to shared memory by cp.async, without passing through registers;
// the default build runs the register path.
#if defined(KERN_CP_ASYNC) && (defined(KERN_CUDASIM) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800))
#define BIG_ASYNC 1
#include "async_copy.cuh"
#else
#define BIG_ASYNC 0
#endif
#define BIG_M 128
#define BIG_N 128
#define BIG_K 8

__device__ __forceinline__ void big_load_weights(float* r, const float* __restrict__ row, bool ok,
                                                 bool vector, int tap, int taps)
{
    if (ok && vector && tap + 3 < taps) {
        const float4 v = *reinterpret_cast<const float4*>(row + tap);
        r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
        return;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = (ok && tap + i < taps) ? row[tap + i] : 0.f;
}

// Taps tap, tap + 2, tap + 4, tap + 6 of one pixel (zero outside the image or past the taps).
__device__ __forceinline__ void big_gather(float* r, const float* __restrict__ image, bool ok,
                                           int iy0, int ix0, int tap, int taps,
                                           const int* __restrict__ tap_table, int h, int wd)
{
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int t = tap + 2 * i;
        float v = 0.f;
        if (ok && t < taps) {
            const int code = tap_table[t];
            const int iy = iy0 + ((code >> 6) & 63), ix = ix0 + (code & 63);
            if (iy >= 0 && iy < h && ix >= 0 && ix < wd) v = image[((long long)(code >> 12) * h + iy) * wd + ix];
        }
        r[i] = v;
    }
}

#if BIG_ASYNC
// The same operands as big_load_weights and big_gather, straight into the shared tiles.
__device__ __forceinline__ void big_async_tiles(
    float (*a)[BIG_M], float (*b)[BIG_N], const float* __restrict__ row, bool a_ok, int ak, int am,
    const float* __restrict__ image, bool b_ok, int iy0, int ix0, int bk, int bp, int k0, int taps,
    const int* __restrict__ tap_table, int h, int wd)
{
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int tap = k0 + ak + i;
        const bool ok = a_ok && tap < taps;
        async_float(&a[ak + i][am], ok ? row + tap : row, ok);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int t = k0 + bk + 2 * i;
        bool ok = b_ok && t < taps;
        const float* src = image;
        if (ok) {
            const int code = tap_table[t];
            const int iy = iy0 + ((code >> 6) & 63), ix = ix0 + (code & 63);
            ok = iy >= 0 && iy < h && ix >= 0 && ix < wd;
            if (ok) src = image + ((long long)(code >> 12) * h + iy) * wd + ix;
        }
        async_float(&b[bk + 2 * i][bp], src, ok);
    }
    async_commit();
}
#endif

extern "C" __global__ void __launch_bounds__(THREADS) conv2d_implicit_gemm_128(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, int n, int c, int h, int wd, int f, int kh, int kw, int stride, int pad_h, int pad_w,
    int groups, int oh, int ow, long long x_image, long long y_image, int act,
    const float* __restrict__ residual, int res_act, const int* __restrict__ tap_table)
{
    __shared__ float a_tile[2][BIG_K][BIG_M];
    __shared__ float b_tile[2][BIG_K][BIG_N];
    const int cg = c / groups, fg = f / groups, taps = cg * kh * kw;
    const int pixels = n * oh * ow, plane = oh * ow;
    const int g = blockIdx.z, m0 = blockIdx.y * BIG_M, p0 = blockIdx.x * BIG_N;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    // This thread's loads: filter row am, taps ak..ak+3 of each step; pixel bp, taps bk + 2i.
    const int am = threadIdx.x / 2, ak = (threadIdx.x % 2) * 4;
    const int bp = threadIdx.x % BIG_N, bk = threadIdx.x / BIG_N;
    const bool a_ok = m0 + am < fg;
    const float* row = w + (long long)(g * fg + (a_ok ? m0 + am : 0)) * taps;
    const bool vector = taps % 4 == 0;
    const int p = p0 + bp;
    const bool b_ok = p < pixels;
    const int image_index = b_ok ? p / plane : 0, q = b_ok ? p % plane : 0;
    const int iy0 = (q / ow) * stride - pad_h, ix0 = (q % ow) * stride - pad_w;
    const float* image = x + image_index * x_image + (long long)g * cg * h * wd;

#if BIG_ASYNC
    (void)vector;  // cp.async moves single floats
    big_async_tiles(a_tile[0], b_tile[0], row, a_ok, ak, am, image, b_ok, iy0, ix0, bk, bp, 0, taps, tap_table, h, wd);
    async_wait_all();
#else
    float a_next[4], b_next[4];
    big_load_weights(a_next, row, a_ok, vector, ak, taps);
    big_gather(b_next, image, b_ok, iy0, ix0, bk, taps, tap_table, h, wd);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        a_tile[0][ak + i][am] = a_next[i];
        b_tile[0][bk + 2 * i][bp] = b_next[i];
    }
#endif
    __syncthreads();
    float acc[8][8] = {{0.f}};
    int buffer = 0;
    for (int k0 = 0; k0 < taps; k0 += BIG_K) {
        const bool more = k0 + BIG_K < taps;
        if (more) {  // the next step's operands, on their way while this step computes
#if BIG_ASYNC  // into the other buffer: everyone has finished reading it a step ago
            big_async_tiles(a_tile[buffer ^ 1], b_tile[buffer ^ 1], row, a_ok, ak, am, image, b_ok, iy0, ix0,
                            bk, bp, k0 + BIG_K, taps, tap_table, h, wd);
#else
            big_load_weights(a_next, row, a_ok, vector, k0 + BIG_K + ak, taps);
            big_gather(b_next, image, b_ok, iy0, ix0, k0 + BIG_K + bk, taps, tap_table, h, wd);
#endif
        }
#pragma unroll
        for (int kk = 0; kk < BIG_K; ++kk) {
            float a[8], b[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                a[i] = a_tile[buffer][kk][ty * 4 + (i % 4) + 64 * (i / 4)];
                b[i] = b_tile[buffer][kk][tx * 4 + (i % 4) + 64 * (i / 4)];
            }
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] += a[i] * b[j];
        }
#if BIG_ASYNC
        if (more) async_wait_all();
#else
        if (more) {  // into the other buffer: everyone has finished reading it a step ago
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a_tile[buffer ^ 1][ak + i][am] = a_next[i];
                b_tile[buffer ^ 1][bk + 2 * i][bp] = b_next[i];
            }
        }
#endif
        __syncthreads();
        buffer ^= 1;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int fo = m0 + ty * 4 + (i % 4) + 64 * (i / 4);
        if (fo >= fg) continue;
        const float bias_f = bias[g * fg + fo];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int pixel = p0 + tx * 4 + (j % 4) + 64 * (j / 4);
            if (pixel >= pixels) continue;
            const int b = pixel / plane, q = pixel % plane;
            const long long at = ((long long)b * f + g * fg + fo) * plane + q;  // in residual
            y[b * y_image + (long long)(g * fg + fo) * plane + q] =
                epilogue(acc[i][j] + bias_f, act, residual, res_act, at);
        }
    }
}

// Kernel 4: the implicit GEMM for layers with few pixels (a batch of one 7 x 7 or 8 x 8 map):
// kernels 2 and 3 would start too few blocks to fill the GPU (49 pixels x 1024 filters: 16
// blocks of kernel 2 for 132 SMs). Smaller tiles (SMALL_M filters x SMALL_N pixels) give more
// blocks, and inside a block the taps are split: each of the 8 warps runs every 8th step of
// SMALL_K taps over the whole tile (its own tiles in shared memory, synchronised with
// __syncwarp only), then the 8 partial sums of each output are added in a fixed order. A
// split-K with no workspace and no atomics: the result is the same on every run.
// Lane l of a warp owns filters (l / 4) * 4 + {0..3} and pixels (l % 4) * 4 + {0..3}.
#define SMALL_M 32
#define SMALL_N 16
#define SMALL_K 8
#define WARPS (THREADS / 32)

extern "C" __global__ void __launch_bounds__(THREADS) conv2d_implicit_gemm_splitk(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, int n, int c, int h, int wd, int f, int kh, int kw, int stride, int pad_h, int pad_w,
    int groups, int oh, int ow, long long x_image, long long y_image, int act,
    const float* __restrict__ residual, int res_act, const int* __restrict__ tap_table)
{
    __shared__ float a_tile[WARPS][SMALL_K][SMALL_M];
    __shared__ float b_tile[WARPS][SMALL_K][SMALL_N];
    __shared__ float partial[WARPS][SMALL_M * SMALL_N];
    const int cg = c / groups, fg = f / groups, taps = cg * kh * kw;
    const int pixels = n * oh * ow, plane = oh * ow;
    const int g = blockIdx.z, m0 = blockIdx.y * SMALL_M, p0 = blockIdx.x * SMALL_N;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = (lane / 4) * 4, col = (lane % 4) * 4;
    // This lane gathers pixel bp, taps bk + {0, 2, 4, 6} of each step (as kernel 3 does).
    const int bp = lane % SMALL_N, bk = lane / SMALL_N;
    const int p = p0 + bp;
    const bool b_ok = p < pixels;
    const int image_index = b_ok ? p / plane : 0, q = b_ok ? p % plane : 0;
    const int iy0 = (q / ow) * stride - pad_h, ix0 = (q % ow) * stride - pad_w;
    const float* image = x + image_index * x_image + (long long)g * cg * h * wd;
    float acc[4][4] = {{0.f}};
    for (int k0 = warp * SMALL_K; k0 < taps; k0 += WARPS * SMALL_K) {
#pragma unroll
        for (int i = 0; i < SMALL_K * SMALL_M / 32; ++i) {
            const int e = i * 32 + lane, m = e / SMALL_K, kk = e % SMALL_K;  // consecutive taps
            const int fo = m0 + m, tap = k0 + kk;
            a_tile[warp][kk][m] = (fo < fg && tap < taps) ? w[(long long)(g * fg + fo) * taps + tap] : 0.f;
        }
        float gathered[4];
        big_gather(gathered, image, b_ok, iy0, ix0, k0 + bk, taps, tap_table, h, wd);
#pragma unroll
        for (int i = 0; i < 4; ++i) b_tile[warp][bk + 2 * i][bp] = gathered[i];
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < SMALL_K; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = a_tile[warp][kk][row + i];
                b[i] = b_tile[warp][kk][col + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncwarp();  // the warp's tiles are overwritten by its next step
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) partial[warp][(row + i) * SMALL_N + col + j] = acc[i][j];
    __syncthreads();
    for (int o = threadIdx.x; o < SMALL_M * SMALL_N; o += THREADS) {
        const int fo = m0 + o / SMALL_N, pixel = p0 + o % SMALL_N;
        if (fo >= fg || pixel >= pixels) continue;
        float sum = 0.f;
        for (int s = 0; s < WARPS; ++s) sum += partial[s][o];
        const int b = pixel / plane, q_out = pixel % plane;
        const long long at = ((long long)b * f + g * fg + fo) * plane + q_out;  // in residual
        y[b * y_image + (long long)(g * fg + fo) * plane + q_out] =
            epilogue(sum + bias[g * fg + fo], act, residual, res_act, at);
    }
}
