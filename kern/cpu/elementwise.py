"""Element-wise and data-movement ops, channels-last (NHWC): activation, softmax, shortcut,
route (concatenation), crop."""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_row, gradient_scalar
from kern.cpu.simd import copy_floats

ACTIVATE_BLOCK = 4096  # elements per job of activate (16 KB: in L1 between the copy and the activation)


@njit(parallel=True, cache=True)
def activate(x, act, out):
    """out = activation applied to every element of x (same shape, C-contiguous), in blocks
    of ACTIVATE_BLOCK elements: a copy, then activate_row's loop."""
    flat, target = x.reshape(-1), out.reshape(-1)
    blocks = (flat.size + ACTIVATE_BLOCK - 1) // ACTIVATE_BLOCK
    for block in prange(blocks):
        start = block * ACTIVATE_BLOCK
        end = min(flat.size, start + ACTIVATE_BLOCK)
        part = target[start:end]
        part[:] = flat[start:end]
        activate_row(part, act)


@njit(parallel=True, cache=True)
def softmax_rows(x, groups, temperature):
    """x (N, K): softmax over each of `groups` contiguous slices of every row."""
    n_rows, width = x.shape
    per_group = width // groups
    out = np.empty_like(x)
    for job in prange(n_rows * groups):
        n, start = job // groups, (job % groups) * per_group
        largest = x[n, start]
        for i in range(start, start + per_group):
            largest = max(largest, x[n, i])
        total = 0.0  # float64: a sum of up to thousands of terms
        for i in range(start, start + per_group):
            e = np.exp((x[n, i] - largest) / temperature)
            out[n, i] = e
            total += e
        for i in range(start, start + per_group):
            out[n, i] = out[n, i] / total
    return out


@njit(parallel=True, cache=True)
def shortcut(x, source, alpha, beta, act, out):
    """out = Darknet's residual add (NHWC, x's shape); see kern/ref/elementwise.py for the
    shape rules."""
    n_images, h_out, w_out, c_out = x.shape
    _, h_src, w_src, c_src = source.shape
    stride = max(w_src // w_out, 1)
    sample = max(w_out // w_src, 1)
    channels, height, width = min(c_out, c_src), min(h_out, h_src), min(w_out, w_src)
    a, b = np.float32(alpha), np.float32(beta)
    for job in prange(n_images * h_out):
        n, i = job // h_out, job % h_out
        added_row = i % sample == 0 and i // sample < height
        for j in range(w_out):
            target, row = out[n, i, j], x[n, i, j]
            if added_row and j % sample == 0 and j // sample < width:
                src = source[n, (i // sample) * stride, (j // sample) * stride]
                for c in range(channels):
                    target[c] = a * row[c] + b * src[c]
                for c in range(channels, c_out):
                    target[c] = row[c]
            else:
                for c in range(c_out):
                    target[c] = row[c]
            activate_row(target, act)


@njit(parallel=True, cache=True)
def concat_channels(xs, out):
    """out = the arrays of the tuple xs side by side along channels (NHWC, same N, H, W; all
    C-contiguous), in one launch, parallel over image rows: a job copies its row of each input
    in turn, 8 lanes at a time. A launch and a pass per input over the whole array took 2-3x as
    long (densenet201's 8x64x64x(224 + 32): 15.8 -> 7.4 ms); a plain element loop was not
    vectorized (LLVM could not rule out overlap): 2.2-4.3x the time of the vectors (8x16x16x(32
    + 992) 0.45 -> 0.11 ms, PyTorch's cat 0.11; AMD EPYC Zen 4, 2 threads)."""
    n_images, height, width, channels = out.shape
    target = out.reshape(-1)
    for row in prange(n_images * height):
        first = 0  # the input's first channel in out
        for x in xs:
            size = x.shape[3]
            source = x.reshape(-1)
            for j in range(width):
                pixel = row * width + j
                copy_floats(target, pixel * channels + first, source, pixel * size, size)
            first += size


@njit(parallel=True, cache=True)
def crop(x, height, width, scale, shift):
    """The centred height x width window (NHWC), then value*scale + shift."""
    n_images, in_h, in_w, channels = x.shape
    top, left = (in_h - height) // 2, (in_w - width) // 2
    s, t = np.float32(scale), np.float32(shift)
    out = np.empty((n_images, height, width, channels), dtype=np.float32)
    for job in prange(n_images * height):
        n, i = job // height, job % height
        for j in range(width):
            for c in range(channels):
                out[n, i, j, c] = x[n, top + i, left + j, c] * s + t
    return out


# ---- training ---------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def add_into(into, value):
    """into += value (same shape, C-contiguous), element by element."""
    target, source = into.reshape(-1), value.reshape(-1)
    for i in prange(target.size):
        target[i] += source[i]


@njit(parallel=True, cache=True)
def shortcut_backward(dy, y, alpha, beta, act, dx, dsource):
    """The gradients of shortcut() (NHWC) for its input x and its source, from dL/dy and its
    output y (kern/ref/elementwise.py: shortcut_backward); dsource must be zeroed."""
    n_images, h_out, w_out, c_out = dy.shape
    _, h_src, w_src, c_src = dsource.shape
    stride = max(w_src // w_out, 1)
    sample = max(w_out // w_src, 1)
    channels, height, width = min(c_out, c_src), min(h_out, h_src), min(w_out, w_src)
    a, b = np.float32(alpha), np.float32(beta)
    for job in prange(n_images * h_out):
        n, i = job // h_out, job % h_out
        added_row = i % sample == 0 and i // sample < height
        for j in range(w_out):
            common = added_row and j % sample == 0 and j // sample < width
            for c in range(c_out):
                d = dy[n, i, j, c] * gradient_scalar(y[n, i, j, c], act)
                if common and c < channels:
                    dx[n, i, j, c] = a * d
                    dsource[n, (i // sample) * stride, (j // sample) * stride, c] = b * d
                else:
                    dx[n, i, j, c] = d


@njit(parallel=True, cache=True)
def dropout(x, keep, scale, out):
    """out = x * scale where keep, else 0 (NHWC, keep as uint8)."""
    source, mask, target = x.reshape(-1), keep.reshape(-1), out.reshape(-1)
    s = np.float32(scale)
    for i in prange(source.size):
        target[i] = source[i] * s if mask[i] else np.float32(0.0)


@njit(parallel=True, cache=True)
def sgd_update(param, update, rate, momentum, decay):
    """Darknet's update, element by element in float32 (no fused multiply-add, as its C):
    update += decay * param; param -= rate * update; update *= momentum."""
    p, u = param.reshape(-1), update.reshape(-1)
    r, m, d = np.float32(rate), np.float32(momentum), np.float32(decay)
    for i in prange(p.size):
        v = u[i]
        if d != 0:
            v = v + d * p[i]
        p[i] = p[i] - r * v
        u[i] = v * m
