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


def maxpool_argmax(x: np.ndarray, size: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """maxpool() and, per output, the flat index in x[n, c] (H*W) of the cell that won: the
    first strict maximum in window order (row by row), as Darknet records it; -1 where no cell
    inside the image beat -FLT_MAX (a window wholly in the padding: no gradient)."""
    n, c, height, width = x.shape
    out_h = maxpool_output_size(height, size, stride, padding)
    out_w = maxpool_output_size(width, size, stride, padding)
    before = padding // 2
    best = np.full((n, c, out_h, out_w), LOWEST, dtype=x.dtype)
    where = np.full((n, c, out_h, out_w), -1, dtype=np.int64)
    rows = np.arange(out_h)[:, None] * stride - before
    cols = np.arange(out_w)[None, :] * stride - before
    for ky in range(size):
        for kx in range(size):
            iy, ix = rows + ky, cols + kx
            inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
            values = x[:, :, np.clip(iy, 0, height - 1), np.clip(ix, 0, width - 1)]
            values = np.where(inside, values, LOWEST)
            wins = values > best
            best = np.where(wins, values, best)
            where = np.where(wins, iy * width + ix, where)
    return best, where


def maxpool_backward(dy: np.ndarray, where: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Each output's gradient added to the cell that won its window (maxpool_argmax)."""
    n, c = dy.shape[:2]
    dx = np.zeros((n, c, in_shape[-2] * in_shape[-1]), dtype=dy.dtype)
    flat_dy, flat_where = dy.reshape(n, c, -1), where.reshape(n, c, -1)
    for i in range(n):
        for j in range(c):
            won = flat_where[i, j] >= 0
            np.add.at(dx[i, j], flat_where[i, j][won], flat_dy[i, j][won])
    return dx.reshape(n, c, *in_shape[-2:])


def avgpool_backward(dy: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Global average pool's gradient: each cell gets dy / (H*W)."""
    height, width = in_shape[-2:]
    return np.broadcast_to(dy / dy.dtype.type(height * width), (*dy.shape[:2], height, width)).copy()
