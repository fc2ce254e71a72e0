// Training kernels, NCHW float32: the backward ops and the update (kern/ref/training.py says
// what each computes; kern/cuda/training.py launches them). No float atomics: each sum is
// made by one thread, or by one block as a tree in shared memory, always in the same order, so
// a training run repeats bit for bit. Blocks that reduce have REDUCE_THREADS threads.
#include "activation.cuh"
#include "reduce.cuh"

// ---- convolution -----------------------------------------------------------------------------
// dL/dx of a convolution: one thread per input element, gathering every output its value
// reached (a transposed convolution, no atomics): dx = sum over the group's filters f and taps
// (ky, kx) with (iy + pad - ky) a multiple of stride of dz[f, oy, ox] * w[f, c, ky, kx].
// accumulate: dx = into + that (into may be dx itself).
extern "C" __global__ void conv_backward_input(
    const float* __restrict__ dz, const float* __restrict__ w, const float* into, float* dx,
    int n, int c, int h, int wd, int f, int k, int stride, int pad, int groups, int oh, int ow,
    int accumulate)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * c * h * wd) return;
    const int ix = idx % wd, iy = (idx / wd) % h, ci = (idx / ((long long)wd * h)) % c;
    const long long b = idx / ((long long)wd * h * c);
    const int channels = c / groups, filters = f / groups, g = ci / channels, cl = ci % channels;
    float sum = 0.f;
    for (int fo = g * filters; fo < (g + 1) * filters; ++fo) {
        const float* plane = dz + (b * f + fo) * oh * ow;
        const float* taps = w + ((long long)fo * channels + cl) * k * k;
        for (int ky = 0; ky < k; ++ky) {
            const int ty = iy + pad - ky;
            if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
            for (int kx = 0; kx < k; ++kx) {
                const int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
                sum += plane[(ty / stride) * ow + tx / stride] * taps[ky * k + kx];
            }
        }
    }
    dx[idx] = accumulate ? into[idx] + sum : sum;
}

// dL/dw summed over the batch, ADDED into dw (the update buffer, OIHW): a GEMM of dz (filters x
// pixels) with the input's taps (taps x pixels; a tap is (channel, ky, kx) of a group). A block
// of 256 threads makes a WG_TILE x WG_TILE tile of (filter, tap) weights, one per thread,
// walking the batch's pixels WG_PIXELS at a time through shared memory; each thread adds its
// chunk's products, then the chunk into its total (blocked: error ~ (P/64 + 64) eps, not P eps).
// Grid: (taps / WG_TILE, filters per group / WG_TILE, groups), rounded up.
extern "C" __global__ void __launch_bounds__(WG_TILE * WG_TILE) conv_backward_weights(
    const float* __restrict__ x, const float* __restrict__ dz, float* dw,
    int n, int c, int h, int wd, int f, int k, int stride, int pad, int groups, int oh, int ow)
{
    __shared__ float grads[WG_TILE][WG_PIXELS];       // dz of the tile's filters
    __shared__ float inputs[WG_TILE][WG_PIXELS + 1];  // the input at the tile's taps (+1: no bank conflicts)
    const int channels = c / groups, filters = f / groups, taps = channels * k * k, g = blockIdx.z;
    const int first_tap = blockIdx.x * WG_TILE, first_filter = blockIdx.y * WG_TILE;
    const int tap = threadIdx.x % WG_TILE, filter = threadIdx.x / WG_TILE;
    const long long pixels = (long long)oh * ow, total = n * pixels;
    float sum = 0.f;
    for (long long p0 = 0; p0 < total; p0 += WG_PIXELS) {
        for (int i = threadIdx.x; i < WG_TILE * WG_PIXELS; i += WG_TILE * WG_TILE) {
            const int row = i / WG_PIXELS, column = i % WG_PIXELS;
            const long long p = p0 + column, b = p / pixels;
            const int oy = (p % pixels) / ow, ox = p % ow;
            const int fo = first_filter + row, t = first_tap + row;
            const bool inside = fo < filters && p < total;
            grads[row][column] = inside ? dz[(b * f + g * filters + fo) * pixels + oy * ow + ox] : 0.f;
            float value = 0.f;
            if (t < taps && p < total) {
                const int cl = t / (k * k), ky = (t / k) % k, kx = t % k;
                const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy >= 0 && iy < h && ix >= 0 && ix < wd)
                    value = x[((b * c + g * channels + cl) * h + iy) * wd + ix];
            }
            inputs[row][column] = value;
        }
        __syncthreads();
        float chunk = 0.f;
        for (int j = 0; j < WG_PIXELS; ++j) chunk += grads[filter][j] * inputs[tap][j];
        sum += chunk;
        __syncthreads();  // the next chunk overwrites the tiles
    }
    if (first_filter + filter < filters && first_tap + tap < taps)
        dw[(long long)(g * filters + first_filter + filter) * taps + first_tap + tap] += sum;
}

// ---- bias, activation, batchnorm -------------------------------------------------------------
extern "C" __global__ void bias_activate(const float* __restrict__ z, const float* __restrict__ bias,
                                         float* __restrict__ y, long long count, int c, int hw, int act)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) y[i] = activate(z[i] + bias[(i / hw) % c], act);
}

extern "C" __global__ void activation_backward(const float* __restrict__ dy, const float* __restrict__ y,
                                               float* __restrict__ dz, long long count, int act)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) dz[i] = dy[i] * activation_gradient(y[i], act);
}

// into[ch] += the sum of d over the batch and the plane: one block per channel (the bias
// gradient).
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) channel_sums(
    const float* __restrict__ d, float* into, int n, int c, int hw)
{
    __shared__ float partial[REDUCE_THREADS];
    const long long per_channel = (long long)n * hw;
    float sum = 0.f;
    for (long long i = threadIdx.x; i < per_channel; i += REDUCE_THREADS)
        sum += d[((i / hw) * c + blockIdx.x) * hw + i % hw];
    sum = block_sum(sum, partial);
    if (threadIdx.x == 0) into[blockIdx.x] += sum;
}

// Darknet's training batchnorm, per channel over the M = n*hw values: the mean, the unbiased
// variance, and the rolling statistics moved by 1% (rate) towards them. One block per channel.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) batchnorm_statistics(
    const float* __restrict__ z, float* mean, float* variance, float* rolling_mean,
    float* rolling_variance, int n, int c, int hw, float keep, float rate)
{
    __shared__ float partial[REDUCE_THREADS];
    const int ch = blockIdx.x;
    const long long count = (long long)n * hw;
    float sum = 0.f;
    for (long long i = threadIdx.x; i < count; i += REDUCE_THREADS) sum += z[((i / hw) * c + ch) * hw + i % hw];
    const float m = block_sum(sum, partial) / (float)count;
    float squares = 0.f;
    for (long long i = threadIdx.x; i < count; i += REDUCE_THREADS) {
        const float centred = z[((i / hw) * c + ch) * hw + i % hw] - m;
        squares += centred * centred;
    }
    const float v = block_sum(squares, partial) / (float)(count - 1);
    if (threadIdx.x == 0) {
        mean[ch] = m;
        variance[ch] = v;
        rolling_mean[ch] = keep * rolling_mean[ch] + rate * m;
        rolling_variance[ch] = keep * rolling_variance[ch] + rate * v;
    }
}

// y = act(scales * (z - mean) / (sqrt(variance) + 1e-6) + biases)
extern "C" __global__ void batchnorm_apply(
    const float* __restrict__ z, const float* __restrict__ mean, const float* __restrict__ variance,
    const float* __restrict__ scales, const float* __restrict__ biases, float* __restrict__ y,
    long long count, int c, int hw, int act)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const int ch = (i / hw) % c;
    const float normalized = (z[i] - mean[ch]) / (sqrtf(variance[ch]) + 1e-6f);
    y[i] = activate(scales[ch] * normalized + biases[ch], act);
}

// The per-channel sums of Darknet's batchnorm backward, d = dy * act'(y), s = sqrt(var + 1e-5):
// biases_into += sum(d), scales_into += sum(d * x_norm); deltas[2ch] = -scale*sum(d)/s (the
// mean's), deltas[2ch+1] = -0.5*scale*sum(d*(z - mean))/s^3 (the variance's).
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) batchnorm_backward_sums(
    const float* __restrict__ dy, const float* __restrict__ y, const float* __restrict__ z,
    const float* __restrict__ mean, const float* __restrict__ variance, const float* __restrict__ scales,
    float* deltas, float* scales_into, float* biases_into, int n, int c, int hw, int act)
{
    __shared__ float partial[REDUCE_THREADS];
    const int ch = blockIdx.x;
    const long long count = (long long)n * hw;
    const float m = mean[ch], forward_std = sqrtf(variance[ch]) + 1e-6f;
    float sum_d = 0.f, sum_normalized = 0.f, sum_centred = 0.f;
    for (long long i = threadIdx.x; i < count; i += REDUCE_THREADS) {
        const long long at = ((i / hw) * c + ch) * hw + i % hw;
        const float d = dy[at] * activation_gradient(y[at], act), centred = z[at] - m;
        sum_d += d;
        sum_normalized += d * (centred / forward_std);
        sum_centred += d * scales[ch] * centred;
    }
    sum_d = block_sum(sum_d, partial);
    sum_normalized = block_sum(sum_normalized, partial);
    sum_centred = block_sum(sum_centred, partial);
    if (threadIdx.x == 0) {
        const float s = sqrtf(variance[ch] + 1e-5f);
        biases_into[ch] += sum_d;
        scales_into[ch] += sum_normalized;
        deltas[2 * ch] = -(scales[ch] * sum_d) / s;
        deltas[2 * ch + 1] = -0.5f * sum_centred / (s * s * s);
    }
}

// dz = d*scale/s + variance_delta*2*(z - mean)/M + mean_delta/M
extern "C" __global__ void batchnorm_backward_apply(
    const float* __restrict__ dy, const float* __restrict__ y, const float* __restrict__ z,
    const float* __restrict__ mean, const float* __restrict__ variance, const float* __restrict__ scales,
    const float* __restrict__ deltas, float* __restrict__ dz, long long count, int c, int hw, int act)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const int ch = (i / hw) % c;
    const float values = (float)(count / c);  // M
    const float d = dy[i] * activation_gradient(y[i], act), s = sqrtf(variance[ch] + 1e-5f);
    dz[i] = d * scales[ch] / s + deltas[2 * ch + 1] * 2.f * (z[i] - mean[ch]) / values
            + deltas[2 * ch] / values;
}

// ---- pooling --------------------------------------------------------------------------------
// Darknet's max pool, also recording per output the index (iy*w + ix) in its plane of the
// first strict maximum, -1 where no cell inside the image beat -FLT_MAX.
extern "C" __global__ void maxpool_argmax(
    const float* __restrict__ x, float* __restrict__ y, int* __restrict__ where, int planes, int h,
    int w, int size, int stride, int pad, int oh, int ow)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)planes * oh * ow) return;
    const int j = idx % ow, i = (idx / ow) % oh;
    const float* in = x + (idx / ((long long)oh * ow)) * h * w;
    const int y0 = i * stride - pad / 2, x0 = j * stride - pad / 2;
    float best = NEG_FLT_MAX;
    int winner = -1;
    for (int yy = y0; yy < y0 + size; ++yy) {
        for (int xx = x0; xx < x0 + size; ++xx) {
            if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            if (in[yy * w + xx] > best) {
                best = in[yy * w + xx];
                winner = yy * w + xx;
            }
        }
    }
    y[idx] = best;
    where[idx] = winner;
}

// dx[cell] = the sum of dy over the outputs this cell won, in output order: one thread per
// input cell, looking at the outputs whose windows hold it. accumulate: plus into.
extern "C" __global__ void maxpool_backward(
    const float* __restrict__ dy, const int* __restrict__ where, const float* into, float* dx,
    int planes, int h, int w, int size, int stride, int pad, int oh, int ow, int accumulate)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)planes * h * w) return;
    const int cell = idx % (h * w), iy = cell / w, ix = cell % w;
    const long long plane = idx / (h * w);
    const int ty = iy + pad / 2, tx = ix + pad / 2;  // the cell in padded coordinates
    float sum = 0.f;
    for (int i = max(0, (ty - size + stride) / stride); i <= min(oh - 1, ty / stride); ++i) {
        for (int j = max(0, (tx - size + stride) / stride); j <= min(ow - 1, tx / stride); ++j) {
            const long long o = (plane * oh + i) * ow + j;
            if (where[o] == cell) sum += dy[o];
        }
    }
    dx[idx] = accumulate ? into[idx] + sum : sum;
}

extern "C" __global__ void avgpool_backward(const float* __restrict__ dy, const float* into, float* dx,
                                            long long count, int hw, int accumulate)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const float share = dy[i / hw] / (float)hw;
    dx[i] = accumulate ? into[i] + share : share;
}

// ---- the loss ---------------------------------------------------------------------------------
// Softmax with cross-entropy, one block per image of `groups` slices of `width` values: p, the
// gradient p - truth (+ cost_scale*(p - truth) where has_cost: a [cost] layer after it), and
// per image its cross-entropy -log p[label] (costs[2b]) and sum((truth - p)^2) (costs[2b+1]).
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS) softmax_cross_entropy(
    const float* __restrict__ x, const int* __restrict__ labels, float* __restrict__ p,
    float* __restrict__ dx, float* __restrict__ costs, int width, int groups, float temperature,
    float cost_scale, int has_cost)
{
    __shared__ float partial[REDUCE_THREADS];
    const long long image = blockIdx.x, size = (long long)width * groups;
    const float* in = x + image * size;
    float* out = p + image * size;
    float* grad = dx + image * size;
    const int label = labels[image];
    for (int g = 0; g < groups; ++g) {
        const int first = g * width;
        float largest = NEG_INF;
        for (int i = threadIdx.x; i < width; i += REDUCE_THREADS)
            largest = fmaxf(largest, in[first + i] / temperature);
        largest = block_max(largest, partial);
        float sum = 0.f;
        for (int i = threadIdx.x; i < width; i += REDUCE_THREADS) {
            const float e = expf(in[first + i] / temperature - largest);
            out[first + i] = e;
            sum += e;
        }
        sum = block_sum(sum, partial);
        for (int i = threadIdx.x; i < width; i += REDUCE_THREADS) out[first + i] /= sum;
    }
    __syncthreads();  // below, threads read p that other threads wrote
    float squares = 0.f;
    for (long long i = threadIdx.x; i < size; i += REDUCE_THREADS) {
        const float error = out[i] - (i == label ? 1.f : 0.f);
        squares += error * error;
        grad[i] = has_cost ? error + cost_scale * error : error;
    }
    squares = block_sum(squares, partial);
    if (threadIdx.x == 0) {
        costs[2 * image] = -logf(out[label]);
        costs[2 * image + 1] = squares;
    }
}

// ---- data movement ----------------------------------------------------------------------------
// shortcut()'s gradient for x: d = dy * act'(y), times alpha on the common part (see shortcut
// in elementwise.cu: source sampled every `stride`-th, or spread to every `sample`-th output).
extern "C" __global__ void shortcut_backward_x(
    const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dx,
    int n, int c, int h, int w, int cs, int hs, int ws, float alpha, int act)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * c * h * w) return;
    const int j = idx % w, i = (idx / w) % h, ch = (idx / ((long long)w * h)) % c;
    const int sample = max(w / ws, 1);
    const bool common = ch < min(c, cs) && i % sample == 0 && i / sample < min(h, hs) && j % sample == 0 &&
                        j / sample < min(w, ws);
    const float d = dy[idx] * activation_gradient(y[idx], act);
    dx[idx] = common ? alpha * d : d;
}

// ... and for the source: beta * d where it was added, 0 elsewhere; one thread per source cell.
extern "C" __global__ void shortcut_backward_source(
    const float* __restrict__ dy, const float* __restrict__ y, float* __restrict__ dsource,
    int n, int c, int h, int w, int cs, int hs, int ws, float beta, int act)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n * cs * hs * ws) return;
    const int sx = idx % ws, sy = (idx / ws) % hs, ch = (idx / ((long long)ws * hs)) % cs;
    const long long b = idx / ((long long)ws * hs * cs);
    const int stride = max(ws / w, 1), sample = max(w / ws, 1);
    float value = 0.f;
    if (ch < min(c, cs) && sy % stride == 0 && sy / stride < min(h, hs) && sx % stride == 0 &&
        sx / stride < min(w, ws)) {
        const long long at = ((b * c + ch) * h + (sy / stride) * sample) * w + (sx / stride) * sample;
        value = beta * (dy[at] * activation_gradient(y[at], act));
    }
    dsource[idx] = value;
}

// y = x * factor (dropout: factor is 1/(1 - probability) where kept, 0 where dropped);
// accumulate: y = into + x * factor.
extern "C" __global__ void multiply(const float* __restrict__ x, const float* __restrict__ factor,
                                    const float* into, float* y, long long count, int accumulate)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const float v = x[i] * factor[i];
    y[i] = accumulate ? into[i] + v : v;
}

// Darknet's crop in training: the window at (top, left) of each plane, mirrored left-right
// first where flip, then x*scale + shift.
extern "C" __global__ void crop_window(const float* __restrict__ x, float* __restrict__ y, int planes,
                                       int h, int w, int height, int width, int top, int left,
                                       int flip, float scale, float shift)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)planes * height * width) return;
    const int j = idx % width, i = (idx / width) % height;
    const long long plane = idx / ((long long)width * height);
    const int column = flip ? w - 1 - (left + j) : left + j;
    y[idx] = x[(plane * h + top + i) * w + column] * scale + shift;
}

extern "C" __global__ void add_into(float* into, const float* __restrict__ value, long long count)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) into[i] += value[i];
}

// ---- the update: Darknet's update_convolutional_layer, element by element, in float32 without
// fused multiply-adds (as its C; the __f*_rn intrinsics are never contracted):
// update += decay * param; param -= rate * update; update *= momentum.
extern "C" __global__ void sgd_update(float* param, float* update, long long count, float rate,
                                      float momentum, float decay)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float v = update[i];
    if (decay != 0.f) v = __fadd_rn(v, __fmul_rn(decay, param[i]));
    param[i] = __fsub_rn(param[i], __fmul_rn(rate, v));
    update[i] = __fmul_rn(v, momentum);
}
