// Pooling, NCHW float32.
#include "activation.cuh"  // NEG_FLT_MAX
#include "reduce.cuh"

// Darknet's max pool: one thread per output; the window of output (i, j) starts at
// (i*stride - pad/2, j*stride - pad/2) with pad the TOTAL padding; outside cells count as
// -FLT_MAX, as in Darknet (a window wholly in the padding gives -FLT_MAX).
// Image b of y starts at y + b * y_image (c*oh*ow, or more for a channel slice of a route).
extern "C" __global__ void maxpool(
    const float* __restrict__ x, float* __restrict__ y, int planes, int h, int w,
    int size, int stride, int pad, int oh, int ow, int c, long long y_image)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)planes * oh * ow) return;
    const int j = idx % ow, i = (idx / ow) % oh;
    const long long p = idx / ((long long)oh * ow);
    const float* in = x + p * h * w;
    const int y0 = i * stride - pad / 2, x0 = j * stride - pad / 2;
    float best = NEG_FLT_MAX;
    for (int ky = 0; ky < size; ++ky) {
        const int yy = y0 + ky;
        if (yy < 0 || yy >= h) continue;
        for (int kx = 0; kx < size; ++kx) {
            const int xx = x0 + kx;
            if (xx >= 0 && xx < w) best = fmaxf(best, in[yy * w + xx]);
        }
    }
    y[(p / c) * y_image + (p % c) * oh * ow + i * ow + j] = best;
}

// Global average pool: one block of REDUCE_THREADS per (n, c) plane, a block-wide tree sum.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) avgpool(const float* __restrict__ x,
                                                                     float* __restrict__ y, int hw)
{
    __shared__ float partial[REDUCE_THREADS];
    const float* in = x + (long long)blockIdx.x * hw;
    float sum = 0.f;
    for (int i = threadIdx.x; i < hw; i += REDUCE_THREADS) sum += in[i];
    sum = block_sum(sum, partial);
    if (threadIdx.x == 0) y[blockIdx.x] = sum / hw;
}

// Caffe's MAX or AVE pooling (kern/ref/channels.py: pool_window): one thread per output; AVE
// divides by the window clipped to [-pad, in + pad).
extern "C" __global__ void pool_window(const float* __restrict__ x, float* __restrict__ y, int planes,
                                       int h, int w, int kh, int kw, int sh, int sw, int ph, int pw,
                                       int oh, int ow, int is_max)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)planes * oh * ow) return;
    const int j = idx % ow, i = (idx / ow) % oh;
    const long long plane = idx / ((long long)oh * ow);
    const int top = i * sh - ph, left = j * sw - pw;
    const int bottom = min(top + kh, h + ph), right = min(left + kw, w + pw);
    float acc = is_max ? NEG_FLT_MAX : 0.f;
    for (int yy = max(top, 0); yy < min(bottom, h); ++yy)
        for (int xx = max(left, 0); xx < min(right, w); ++xx) {
            const float v = x[(plane * h + yy) * w + xx];
            acc = is_max ? fmaxf(acc, v) : acc + v;
        }
    y[idx] = is_max ? acc : acc / (float)((bottom - top) * (right - left));
}
