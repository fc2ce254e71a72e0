"""Batchnorm in training on the CPU (NHWC): Darknet's formulas (kern/ref/batchnorm.py), in
three kinds of pass over a layer's M = N*H*W pixels, the innermost loop along a pixel's
contiguous channels:
- per-channel sums (the batch mean and variance; in the backward the two sums the input's
  gradient needs), each in float64 over a fixed chunk of STAT_PIXELS pixels, the chunks
  then added in order (np.sum over the chunk axis): the same sums for every thread count,
  the chunks in parallel;
- the normalization, scale, bias and activation, one pass writing y;
- the input's gradient, one pass: dz = d*A + (z - mean)*B + C per channel, d = dy * act'(y).
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import LEAKY, LINEAR, activate_scalar, gradient_scalar, leaky_gradient, leaky_scalar
from kern.cpu.buffers import Empty, new_array
from kern.params import BN_BACKWARD_EPSILON, DARKNET_BN_EPSILON, ROLLING_RATE

STAT_PIXELS = 512  # pixels per partial sum


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _chunks(pixels: int) -> int:
    return (pixels + STAT_PIXELS - 1) // STAT_PIXELS


@njit(parallel=True, cache=True)
def _moments(rows, shift, partial):
    """partial[chunk, 0, c] = sum of (rows - shift), partial[chunk, 1, c] = sum of its
    squares, over the chunk's pixels, in float64. One pass: about the shift (the first pixel),
    the squares do not lose the variance to the mean's square. Channels innermost, no branch
    in the loop: LLVM vectorizes it (a version with a branch and blocks of channels ran 14x
    slower: 14 ms against 1.0 for 100,352 x 32, AMD EPYC, 1 thread)."""
    pixels, channels = rows.shape
    for chunk in prange(partial.shape[0]):
        plain = np.zeros(channels, dtype=np.float64)
        squares = np.zeros(channels, dtype=np.float64)
        for p in range(chunk * STAT_PIXELS, min(pixels, (chunk + 1) * STAT_PIXELS)):
            for c in range(channels):
                v = np.float64(rows[p, c]) - shift[c]
                plain[c] += v
                squares[c] += v * v
        for c in range(channels):
            partial[chunk, 0, c] = plain[c]
            partial[chunk, 1, c] = squares[c]


def mean_and_variance(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel of NHWC z: the mean and the unbiased variance (Darknet's, / (M - 1)), as
    float64."""
    rows = _rows(z)
    pixels, channels = rows.shape
    shift = rows[0].astype(np.float64)
    partial = np.empty((_chunks(pixels), 2, channels), dtype=np.float64)
    _moments(rows, shift, partial)
    plain, squares = partial.sum(axis=0)
    variance = np.maximum(squares - plain * plain / pixels, 0.0) / max(pixels - 1, 1)
    return shift + plain / pixels, variance


@njit(parallel=True, cache=True)
def _normalize(rows, mean, factor, biases, act, out):
    """out = act((z - mean) * factor + biases), factor = scales / (sqrt(variance) + 1e-6).
    Leaky, every Darknet classifier's, has a loop of its own: in one loop activate_scalar's
    other branches (exp) kept LLVM from vectorizing it, 6.1 ms against 1.7 for linear
    (100,352 x 32, 2 threads, AMD EPYC Zen 3)."""
    for p in prange(rows.shape[0]):
        row, target = rows[p], out[p]
        if act == LEAKY:
            for c in range(row.size):
                target[c] = leaky_scalar((row[c] - mean[c]) * factor[c] + biases[c])
        else:
            for c in range(row.size):
                target[c] = activate_scalar((row[c] - mean[c]) * factor[c] + biases[c], act)


def batchnorm_forward(
    z: np.ndarray, scales: np.ndarray, biases: np.ndarray, rolling_mean: np.ndarray,
    rolling_variance: np.ndarray, act: int, empty: Empty = new_array,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, mean, variance) of a training batch (float32 statistics); the rolling statistics
    are updated in place, in float32 as Darknet does (0.99 r + 0.01 batch). y comes from
    empty (kern/cpu/buffers.py)."""
    mean64, variance64 = mean_and_variance(z)
    mean, variance = mean64.astype(np.float32), variance64.astype(np.float32)
    factor = normalize_factor(scales, variance)
    y = empty(z.shape)
    _normalize(_rows(z), mean, factor, biases, act, _rows(y))
    keep, rate = np.float32(1 - ROLLING_RATE), np.float32(ROLLING_RATE)
    rolling_mean[...] = keep * rolling_mean + rate * mean
    rolling_variance[...] = keep * rolling_variance + rate * variance
    return y, mean, variance


# The backward passes need d = dy * act'(y). For leaky, y's sign is that of the forward's
# t = (z - mean) * factor + biases, recomputed from z by the same float32 operations as
# _normalize's (no fastmath: the same bits), and linear needs no y: y, a layer's largest array
# after z, is not read again. Each pass reads from memory what the step wrote long before:
# cifar_small's first layer at batch 128 (12.8 MB an array), its caches emptied first, 2.21 ->
# 1.52 ms (2 threads, AMD EPYC Zen 4).


@njit(parallel=True, cache=True)
def _gradient_sums(dy, y, z, mean, mean64, factor, biases, act, partial):
    """partial[chunk, 0, c] = sum of d, partial[chunk, 1, c] = sum of d * (z - mean), with
    d = dy * act'(y), over the chunk's pixels, in float64."""
    pixels, channels = dy.shape
    for chunk in prange(partial.shape[0]):
        plain = np.zeros(channels, dtype=np.float64)
        centred = np.zeros(channels, dtype=np.float64)
        for p in range(chunk * STAT_PIXELS, min(pixels, (chunk + 1) * STAT_PIXELS)):
            if act == LEAKY:  # each a loop of its own: LLVM vectorizes it (see _normalize)
                for c in range(channels):
                    t = (z[p, c] - mean[c]) * factor[c] + biases[c]
                    d = np.float64(dy[p, c] * leaky_gradient(leaky_scalar(t)))
                    plain[c] += d
                    centred[c] += d * (np.float64(z[p, c]) - mean64[c])
            elif act == LINEAR:
                for c in range(channels):
                    d = np.float64(dy[p, c])
                    plain[c] += d
                    centred[c] += d * (np.float64(z[p, c]) - mean64[c])
            else:
                for c in range(channels):
                    d = np.float64(dy[p, c] * gradient_scalar(y[p, c], act))
                    plain[c] += d
                    centred[c] += d * (np.float64(z[p, c]) - mean64[c])
        for c in range(channels):
            partial[chunk, 0, c] = plain[c]
            partial[chunk, 1, c] = centred[c]


@njit(parallel=True, cache=True)
def _input_gradient(dy, y, z, mean, factor, biases, a, b, c0, act, out):
    """out = d * a + (z - mean) * b + c0 per channel, d = dy * act'(y) (out may be dy)."""
    for p in prange(dy.shape[0]):
        if act == LEAKY:
            for c in range(dy.shape[1]):
                t = (z[p, c] - mean[c]) * factor[c] + biases[c]
                d = dy[p, c] * leaky_gradient(leaky_scalar(t))
                out[p, c] = d * a[c] + (z[p, c] - mean[c]) * b[c] + c0[c]
        elif act == LINEAR:
            for c in range(dy.shape[1]):
                out[p, c] = dy[p, c] * a[c] + (z[p, c] - mean[c]) * b[c] + c0[c]
        else:
            for c in range(dy.shape[1]):
                d = dy[p, c] * gradient_scalar(y[p, c], act)
                out[p, c] = d * a[c] + (z[p, c] - mean[c]) * b[c] + c0[c]


def normalize_factor(scales: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """scales / (sqrt(variance) + 1e-6) in float32: the forward's factor, and the backward's
    to recompute the forward's t."""
    return (scales / (np.sqrt(variance) + np.float32(DARKNET_BN_EPSILON))).astype(np.float32)


def batchnorm_backward(
    dy: np.ndarray, y: np.ndarray, z: np.ndarray, mean: np.ndarray, variance: np.ndarray,
    scales: np.ndarray, biases: np.ndarray, act: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dL/dz, dL/dscales, dL/dbiases); dL/dz is written over dy (whose pass is over). scales
    and biases as the forward had them; y is read only for activations other than leaky and
    linear."""
    rows = [_rows(a) for a in (dy, y, z)]
    pixels, channels = rows[0].shape
    mean64 = mean.astype(np.float64)
    factor = normalize_factor(scales, variance)
    partial = np.empty((_chunks(pixels), 2, channels), dtype=np.float64)
    _gradient_sums(*rows, mean, mean64, factor, biases, act, partial)
    plain, centred = partial.sum(axis=0)
    std = np.sqrt(variance.astype(np.float64) + BN_BACKWARD_EPSILON)
    scales64 = scales.astype(np.float64)
    dscales = centred / (np.sqrt(variance.astype(np.float64)) + DARKNET_BN_EPSILON)  # sum(d * x_norm)
    mean_delta = -scales64 * plain / std
    variance_delta = -0.5 * scales64 * centred * std**-3
    a = (scales64 / std).astype(np.float32)
    b = (2 * variance_delta / pixels).astype(np.float32)
    c0 = (mean_delta / pixels).astype(np.float32)
    _input_gradient(*rows, mean, factor, biases, a, b, c0, act, rows[0])
    return dy, dscales.astype(np.float32), plain.astype(np.float32)


@njit(parallel=True, cache=True)
def _activation_gradient(dy, y, act, partial):
    """dy *= act'(y) in place; partial[chunk, c] = the chunk's sum of it (the bias gradient)."""
    pixels, channels = dy.shape
    for chunk in prange(partial.shape[0]):
        total = np.zeros(channels, dtype=np.float64)
        for p in range(chunk * STAT_PIXELS, min(pixels, (chunk + 1) * STAT_PIXELS)):
            if act == LEAKY:  # a loop of its own: LLVM vectorizes it
                for c in range(channels):
                    d = dy[p, c] * leaky_gradient(y[p, c])
                    dy[p, c] = d
                    total[c] += d
            else:
                for c in range(channels):
                    d = dy[p, c] * gradient_scalar(y[p, c], act)
                    dy[p, c] = d
                    total[c] += d
        for c in range(channels):  # a loop, not an array assignment: no shape check to compile
            partial[chunk, c] = total[c]


def activation_backward(dy: np.ndarray, y: np.ndarray, act: int) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dz written over dy, the bias gradient: its sum per channel)."""
    rows = _rows(dy)
    partial = np.empty((_chunks(rows.shape[0]), rows.shape[1]), dtype=np.float64)
    _activation_gradient(rows, _rows(y), act, partial)
    return dy, partial.sum(axis=0).astype(np.float32)
