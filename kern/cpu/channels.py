"""Per-channel ops, channels-last (NHWC) as the rest of the CPU backend (the same ops in NumPy:
kern/ref/channels.py). Each works on (pixels, channels) rows, parallel over pixels: a pixel's
channels are contiguous, so the inner loop runs along them in vector lanes."""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_row
from kern.cpu.simd import copy_floats


@njit(parallel=True, cache=True)
def affine(x, scale, bias, slope, act, out):
    """out = activation(v), v = x * scale[c] + bias[c], times slope[c] where v < 0 (PReLU;
    slope 1: none); x, out (pixels, C)."""
    pixels, channels = x.shape
    for p in prange(pixels):
        row, target = x[p], out[p]
        for c in range(channels):
            v = row[c] * scale[c] + bias[c]
            target[c] = v if v > 0 else v * slope[c]
        activate_row(target, act)


@njit(parallel=True, fastmath=True, cache=True)
def combine(x, other, is_max, out):
    """out = max(x, other) where is_max, else x * other (Caffe's Eltwise MAX and PROD); flat."""
    a, b, target = x.reshape(-1), other.reshape(-1), out.reshape(-1)
    for i in prange(a.size):
        target[i] = max(a[i], b[i]) if is_max else a[i] * b[i]


@njit(parallel=True, cache=True)
def scale_channels(x, factors, add, has_add, out):
    """out = x * factors[n, c] (+ add where has_add); x, add, out (N, pixels, C), factors (N, C)."""
    n_images, pixels, channels = x.shape
    for job in prange(n_images * pixels):
        n, p = job // pixels, job % pixels
        if has_add:
            for c in range(channels):
                out[n, p, c] = x[n, p, c] * factors[n, c] + add[n, p, c]
        else:
            for c in range(channels):
                out[n, p, c] = x[n, p, c] * factors[n, c]


@njit(parallel=True, fastmath=True, cache=True)
def lrn(x, size, alpha, beta, k, out):
    """Caffe's LRN across channels (kern/ref/channels.py); x, out (pixels, C). The window's sum
    of squares is summed afresh per channel (size is 5 in every shipped network), in float64."""
    pixels, channels = x.shape
    before = (size - 1) // 2
    for p in prange(pixels):
        for c in range(channels):
            total = 0.0
            for d in range(max(c - before, 0), min(c - before + size, channels)):
                total += np.float64(x[p, d]) * x[p, d]
            out[p, c] = x[p, c] * (k + alpha / size * total) ** -beta


@njit(parallel=True, cache=True)
def slice_channels(x, first, out):
    """out = channels first .. first + out's channels of x; x (pixels, C), out (pixels, count),
    8 lanes at a time (simd.copy_floats): the element loop, not vectorized, took 4-5x as long
    (8x56x56 pixels, 256 of 296 channels: 3.39 -> 0.60 ms, AMD EPYC Zen 4, 2 threads)."""
    pixels, count = out.shape
    for p in prange(pixels):
        copy_floats(out[p], 0, x[p], first, count)


@njit(parallel=True, fastmath=True, cache=True)
def pool_window(x, is_max, k_h, k_w, s_h, s_w, p_h, p_w, out):
    """Caffe's MAX or AVE pooling (kern/ref/channels.py: pool_window); x (N, H, W, C), out
    (N, OH, OW, C); parallel over output rows, the channels in vector lanes. A window wholly in
    the padding (which Caffe's sizes never make) gives MAX -FLT_MAX."""
    n_images, height, width, channels = x.shape
    _, out_h, out_w, _ = out.shape
    for job in prange(n_images * out_h):
        n, i = job // out_h, job % out_h
        top = i * s_h - p_h
        bottom = min(top + k_h, height + p_h)
        acc = np.empty(channels, dtype=np.float32)
        for j in range(out_w):
            left = j * s_w - p_w
            right = min(left + k_w, width + p_w)
            acc[:] = np.float32(-3.4028235e38) if is_max else np.float32(0.0)
            for y in range(max(top, 0), min(bottom, height)):
                for xx in range(max(left, 0), min(right, width)):
                    for c in range(channels):
                        v = x[n, y, xx, c]
                        acc[c] = max(acc[c], v) if is_max else acc[c] + v
            scale = np.float32(1.0) if is_max else np.float32(1.0 / ((bottom - top) * (right - left)))
            for c in range(channels):
                out[n, i, j, c] = acc[c] * scale
