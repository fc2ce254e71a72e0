"""Max pooling (Darknet's padding rule) and global average pooling, channels-last (NHWC).

In NHWC the innermost loop runs over contiguous channels, so LLVM vectorizes the max and the
sum; the window is clipped to the image once per output pixel, not tested per cell.
"""

import numpy as np
from numba import njit, prange

LOWEST = np.float32(np.finfo(np.float32).min)  # C's -FLT_MAX


@njit(parallel=True, fastmath=True, cache=True)
def maxpool(x, size, stride, padding, out):
    """x (N, H, W, C) -> out (N, OH, OW, C), OH = (H + padding - size)//stride + 1.

    The window of output (i, j) starts at (i*stride - padding//2, j*stride - padding//2);
    cells outside the image count as -FLT_MAX, as in Darknet: never winning, and giving
    -FLT_MAX (finite) where a window lies wholly in the padding.
    """
    n_images, height, width, channels = x.shape
    _, out_h, out_w, _ = out.shape
    offset = padding // 2
    for job in prange(n_images * out_h):
        n, i = job // out_h, job % out_h
        y0 = max(i * stride - offset, 0)
        y1 = min(i * stride - offset + size, height)
        for j in range(out_w):
            x0 = max(j * stride - offset, 0)
            x1 = min(j * stride - offset + size, width)
            best = out[n, i, j]
            best[:] = LOWEST
            for y in range(y0, y1):
                for xx in range(x0, x1):
                    cell = x[n, y, xx]
                    for c in range(channels):
                        best[c] = max(best[c], cell[c])


AVG_BLOCK = 64  # channels per job of avgpool


@njit(parallel=True, cache=True)
def avgpool(x):
    """Global average: (N, H, W, C) -> (N, 1, 1, C); sums in float64, then one division.
    Jobs are (image, block of 64 channels): the innermost loop runs along a pixel's
    contiguous channels. A job per channel, reading one float per 64-byte line, was 4-8x
    slower at batch 8 (8 x 14 x 14 x 1000: 1.40-1.68 ms against 0.36-0.38; 8 x 7 x 7 x 2048:
    1.33-1.46 against 0.17-0.19, AMD EPYC, 2 threads, alternating); the sums are the same."""
    n_images, height, width, channels = x.shape
    out = np.empty((n_images, 1, 1, channels), dtype=np.float32)
    blocks = (channels + AVG_BLOCK - 1) // AVG_BLOCK
    for job in prange(n_images * blocks):
        n, first = job // blocks, job % blocks * AVG_BLOCK
        count = min(AVG_BLOCK, channels - first)
        total = np.zeros(AVG_BLOCK, dtype=np.float64)
        for y in range(height):
            for xx in range(width):
                cell = x[n, y, xx]
                for c in range(count):
                    total[c] += cell[first + c]
        for c in range(count):
            out[n, 0, 0, first + c] = total[c] / (height * width)
    return out


@njit(parallel=True, cache=True)
def maxpool_argmax(x, size, stride, padding, out, where):
    """maxpool() that also records, per output, the input pixel (y * W + x of its image) whose
    value won: the first strict maximum in window order (Darknet's), -1 where none beat
    -FLT_MAX. out and where: (N, OH, OW, C)."""
    n_images, height, width, channels = x.shape
    _, out_h, out_w, _ = out.shape
    offset = padding // 2
    for job in prange(n_images * out_h):
        n, i = job // out_h, job % out_h
        y0 = max(i * stride - offset, 0)
        y1 = min(i * stride - offset + size, height)
        for j in range(out_w):
            x0 = max(j * stride - offset, 0)
            x1 = min(j * stride - offset + size, width)
            best, won = out[n, i, j], where[n, i, j]
            best[:] = LOWEST
            won[:] = -1
            for y in range(y0, y1):
                for xx in range(x0, x1):
                    cell = x[n, y, xx]
                    for c in range(channels):
                        if cell[c] > best[c]:
                            best[c] = cell[c]
                            won[c] = y * width + xx


@njit(parallel=True, cache=True)
def maxpool_backward(dy, where, dx):
    """dx[n, winner] += dy for every output (dx: (N, H, W, C), zeroed or holding other
    gradients). Jobs over (image, block of 16 channels): windows that overlap add into the
    same cells, always in output order, by one job."""
    n_images, out_h, out_w, channels = dy.shape
    width = dx.shape[2]
    blocks = (channels + 15) // 16
    for job in prange(n_images * blocks):
        n, first = job // blocks, job % blocks * 16
        last = min(channels, first + 16)
        for i in range(out_h):
            for j in range(out_w):
                for c in range(first, last):
                    winner = where[n, i, j, c]
                    if winner >= 0:
                        dx[n, winner // width, winner % width, c] += dy[n, i, j, c]


@njit(parallel=True, cache=True)
def avgpool_backward(dy, dx, add):
    """dx = dy / (H * W) in every cell (added to dx where `add`); dy (N, 1, 1, C)."""
    n_images, height, width, channels = dx.shape
    scale = np.float32(1.0) / np.float32(height * width)
    for job in prange(n_images * height):
        n, i = job // height, job % height
        share = dy[n, 0, 0]
        for j in range(width):
            cell = dx[n, i, j]
            for c in range(channels):
                g = share[c] * scale
                cell[c] = cell[c] + g if add else g
