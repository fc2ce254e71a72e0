"""Max pooling (Darknet's padding rule) and global average pooling, parallel over planes."""

import numpy as np
from numba import njit, prange

_LOWEST = np.float32(-np.inf)  # Darknet uses -FLT_MAX: outside cells never win either way


@njit(parallel=True, fastmath=False, cache=True)
def maxpool(x, size, stride, padding):
    """x (N, C, H, W) -> (N, C, OH, OW), OH = (H + padding - size)//stride + 1.

    The window of output (i, j) starts at (i*stride - padding//2, j*stride - padding//2).
    """
    n_images, channels, height, width = x.shape
    out_h = (height + padding - size) // stride + 1
    out_w = (width + padding - size) // stride + 1
    offset = padding // 2
    out = np.empty((n_images, channels, out_h, out_w), dtype=np.float32)
    for plane in prange(n_images * channels):
        n, c = plane // channels, plane % channels
        for i in range(out_h):
            for j in range(out_w):
                best = _LOWEST
                for ky in range(size):
                    y = i * stride - offset + ky
                    if 0 <= y < height:
                        for kx in range(size):
                            xx = j * stride - offset + kx
                            if 0 <= xx < width and x[n, c, y, xx] > best:
                                best = x[n, c, y, xx]
                out[n, c, i, j] = best
    return out


@njit(parallel=True, cache=True)
def avgpool(x):
    """Global average: (N, C, H, W) -> (N, C, 1, 1); sums in float64, then one division."""
    n_images, channels, height, width = x.shape
    out = np.empty((n_images, channels, 1, 1), dtype=np.float32)
    for plane in prange(n_images * channels):
        n, c = plane // channels, plane % channels
        total = 0.0
        for y in range(height):
            for xx in range(width):
                total += x[n, c, y, xx]
        out[n, c, 0, 0] = total / (height * width)
    return out
