// Element-wise and data-movement ops, NCHW float32: one thread per output element unless
// said otherwise.
#include "activation.cuh"
#include "reduce.cuh"

extern "C" __global__ void activate_all(const float* __restrict__ x, float* __restrict__ y,
                                        long long count, int act)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) y[i] = activate(x[i], act);
}

// Darknet's residual add: y = act(alpha*x + beta*source) on the common part, where source is
// sampled with stride = w_src/w_out or spread with sample = w_out/w_src; act(x) elsewhere.
extern "C" __global__ void shortcut(
    const float* __restrict__ x, const float* __restrict__ src, float* __restrict__ y,
    int n, int c, int h, int w, int cs, int hs, int ws, float alpha, float beta, int act)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * c * h * w) return;
    const int j = idx % w, i = (idx / w) % h, ch = (idx / ((long long)w * h)) % c;
    const int b = idx / ((long long)w * h * c);
    const int stride = max(ws / w, 1), sample = max(w / ws, 1);
    float v = x[idx];
    if (ch < min(c, cs) && i % sample == 0 && j % sample == 0 && i / sample < min(h, hs) &&
        j / sample < min(w, ws)) {
        const long long s = (((long long)b * cs + ch) * hs + (i / sample) * stride) * ws +
                            (j / sample) * stride;
        v = alpha * v + beta * src[s];
    }
    y[idx] = activate(v, act);
}

// Route (concat on channels): copy the cs channels of src into dst, both (N, cs, HW) with
// images src_image and dst_image floats apart (dst: a channel slice of the route's output).
extern "C" __global__ void copy_channels(const float* __restrict__ src, float* __restrict__ dst,
                                         int n, int cs, int hw, long long src_image,
                                         long long dst_image)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * cs * hw) return;
    const long long within = idx % ((long long)cs * hw), b = idx / ((long long)cs * hw);
    dst[b * dst_image + within] = src[b * src_image + within];
}

// Crop layer: the centred oh x ow window of each plane, then v*scale + shift.
extern "C" __global__ void crop(const float* __restrict__ x, float* __restrict__ y, int planes,
                                int h, int w, int oh, int ow, float scale, float shift)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)planes * oh * ow) return;
    const int j = idx % ow, i = (idx / ow) % oh;
    const long long p = idx / ((long long)oh * ow);
    const int top = (h - oh) / 2, left = (w - ow) / 2;
    y[idx] = x[(p * h + top + i) * w + left + j] * scale + shift;
}

// Softmax over rows of `width` values (one row per image and group): one block of
// REDUCE_THREADS per row, max and sum by block-wide tree reductions.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) softmax_rows(
    const float* __restrict__ x, float* __restrict__ y, int width, float temperature)
{
    __shared__ float partial[REDUCE_THREADS];
    const float* in = x + (long long)blockIdx.x * width;
    float* out = y + (long long)blockIdx.x * width;
    float largest = NEG_INF;
    for (int i = threadIdx.x; i < width; i += REDUCE_THREADS) largest = fmaxf(largest, in[i]);
    largest = block_max(largest, partial);
    float sum = 0.f;
    for (int i = threadIdx.x; i < width; i += REDUCE_THREADS) {
        const float e = expf((in[i] - largest) / temperature);
        out[i] = e;
        sum += e;
    }
    const float total = block_sum(sum, partial);
    for (int i = threadIdx.x; i < width; i += REDUCE_THREADS) out[i] /= total;
}

// Per-channel ops (Caffe's networks; kern/ref/channels.py says what each computes).
// Channel affine: y = act(v), v = x*scale[c] + bias[c], times slope[c] below 0 (PReLU; slope
// 1: none), over (N, C, hw).
extern "C" __global__ void affine_channels(const float* __restrict__ x, float* __restrict__ y,
                                           const float* __restrict__ scale,
                                           const float* __restrict__ bias,
                                           const float* __restrict__ slope, long long count, int c,
                                           int hw, int act)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const int ch = (i / hw) % c;
    const float v = x[i] * scale[ch] + bias[ch];
    y[i] = activate(v > 0.f ? v : v * slope[ch], act);
}

// Caffe's Eltwise MAX (is_max) or PROD of two arrays of one shape.
extern "C" __global__ void combine(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, long long count, int is_max)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) y[i] = is_max ? fmaxf(a[i], b[i]) : a[i] * b[i];
}

// y = x * factors[n, c] (+ add where has_add): factors holds one value per image and channel.
extern "C" __global__ void scale_channels(const float* __restrict__ x,
                                          const float* __restrict__ factors,
                                          const float* __restrict__ add, float* __restrict__ y,
                                          long long count, int hw, int has_add)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float v = x[i] * factors[i / hw];
    if (has_add) v += add[i];
    y[i] = v;
}

// Caffe's LRN across channels: x / (k + alpha/size * sum of squares over the channel window)^beta.
extern "C" __global__ void lrn_channels(const float* __restrict__ x, float* __restrict__ y, int n,
                                        int c, int hw, int size, float alpha, float beta, float k)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * c * hw) return;
    const int p = idx % hw, ch = (idx / hw) % c;
    const long long image = idx / ((long long)hw * c) * c * hw;
    const int first = ch - (size - 1) / 2;
    float total = 0.f;
    for (int d = max(first, 0); d < min(first + size, c); ++d) {
        const float v = x[image + (long long)d * hw + p];
        total += v * v;
    }
    y[idx] = x[idx] * powf(k + alpha / size * total, -beta);
}
