"""Element-wise and data-movement ops: activation, softmax, shortcut, route (concat), crop."""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar


@njit(parallel=True, fastmath=True, cache=True)
def activate(x, act):
    """A new array: activation applied to every element of x (any shape, C-contiguous)."""
    flat = x.ravel()
    out = np.empty_like(flat)
    for i in prange(flat.size):
        out[i] = activate_scalar(flat[i], act)
    return out.reshape(x.shape)


@njit(parallel=True, cache=True)
def softmax(x, groups, temperature):
    """Per image, softmax over each of `groups` contiguous slices of the flattened values."""
    n_images = x.shape[0]
    flat = x.reshape(n_images, -1)
    per_group = flat.shape[1] // groups
    out = np.empty_like(flat)
    for job in prange(n_images * groups):
        n, start = job // groups, (job % groups) * per_group
        largest = flat[n, start]
        for i in range(start, start + per_group):
            largest = max(largest, flat[n, i])
        total = 0.0  # float64: a sum of up to thousands of terms
        for i in range(start, start + per_group):
            e = np.exp((flat[n, i] - largest) / temperature)
            out[n, i] = e
            total += e
        for i in range(start, start + per_group):
            out[n, i] = out[n, i] / total
    return out.reshape(x.shape)


@njit(parallel=True, fastmath=True, cache=True)
def shortcut(x, source, alpha, beta, act):
    """Darknet's residual add; see kern/ref/elementwise.py for the shape rules."""
    n_images, c_out, h_out, w_out = x.shape
    _, c_src, h_src, w_src = source.shape
    stride = max(w_src // w_out, 1)
    sample = max(w_out // w_src, 1)
    channels, height, width = min(c_out, c_src), min(h_out, h_src), min(w_out, w_src)
    a, b = np.float32(alpha), np.float32(beta)
    out = np.empty_like(x)
    for plane in prange(n_images * c_out):
        n, c = plane // c_out, plane % c_out
        for i in range(h_out):
            for j in range(w_out):
                out[n, c, i, j] = x[n, c, i, j]
        if c < channels:
            for i in range(height):
                for j in range(width):
                    oi, oj = i * sample, j * sample
                    out[n, c, oi, oj] = a * x[n, c, oi, oj] + b * source[n, c, i * stride, j * stride]
        for i in range(h_out):
            for j in range(w_out):
                out[n, c, i, j] = activate_scalar(out[n, c, i, j], act)
    return out


@njit(parallel=True, cache=True)
def copy_channels(src, dst, first_channel):
    """dst[:, first_channel : first_channel + C] = src, parallel over images x channels."""
    n_images, channels = src.shape[0], src.shape[1]
    for plane in prange(n_images * channels):
        n, c = plane // channels, plane % channels
        dst[n, first_channel + c] = src[n, c]


@njit(parallel=True, fastmath=True, cache=True)
def crop(x, height, width, scale, shift):
    """The centred height x width window of every plane, then value*scale + shift."""
    n_images, channels, in_h, in_w = x.shape
    top, left = (in_h - height) // 2, (in_w - width) // 2
    s, t = np.float32(scale), np.float32(shift)
    out = np.empty((n_images, channels, height, width), dtype=np.float32)
    for plane in prange(n_images * channels):
        n, c = plane // channels, plane % channels
        for i in range(height):
            for j in range(width):
                out[n, c, i, j] = x[n, c, top + i, left + j] * s + t
    return out
