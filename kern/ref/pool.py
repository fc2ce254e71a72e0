"""Pooling: Darknet's max pool (with its total-padding rule) and global average pool."""

from __future__ import annotations

import numpy as np

from kern.params import maxpool_output_size

LOWEST = float(np.finfo(np.float32).min)  # C's -FLT_MAX, in either dtype


def maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """out[i, j] = max of the size x size window at (i*stride - padding//2, j*stride - padding//2).

    Cells outside the input count as -FLT_MAX, as in Darknet: they never win, and a window
    wholly in the padding gives -FLT_MAX.
    """
    n, c, height, width = x.shape
    out_h = maxpool_output_size(height, size, stride, padding)
    out_w = maxpool_output_size(width, size, stride, padding)
    before = padding // 2
    # Enough padding on each side for every window, filled with -FLT_MAX.
    after_h = max(0, (out_h - 1) * stride + size - before - height)
    after_w = max(0, (out_w - 1) * stride + size - before - width)
    padded = np.pad(
        x, ((0, 0), (0, 0), (before, after_h), (before, after_w)), constant_values=LOWEST
    )
    out = np.full((n, c, out_h, out_w), LOWEST, dtype=x.dtype)
    for ky in range(size):
        for kx in range(size):
            window = padded[
                :, :, ky : ky + stride * (out_h - 1) + 1 : stride, kx : kx + stride * (out_w - 1) + 1 : stride
            ]
            np.maximum(out, window, out=out)
    return out


def avgpool(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)
