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
            if y1 - y0 == 2 and x1 - x0 == 2:  # most windows: four cells in one pass, max in window order
                a, b, c0, d = x[n, y0, x0], x[n, y0, x0 + 1], x[n, y0 + 1, x0], x[n, y0 + 1, x0 + 1]
                for c in range(channels):
                    best[c] = max(max(max(max(LOWEST, a[c]), b[c]), c0[c]), d[c])
                continue
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
    Jobs are (image, block of 64 channels). A job sums 16 channels at a time in 16 named
    float64 accumulators (LLVM keeps them in two vector registers) over the pixels, which it
    reads as one 64-byte line each, then the last channels one by one. Summing into an array
    of 64 float64 instead (a load and a store per add) took 2-4x as long: 8 x 14 x 14 x 1000
    0.67-1.19 ms against 0.23, 8 x 7 x 7 x 2048 0.34 against 0.14 (AMD EPYC Zen 4, 2
    threads); the sums are the same, in the same order."""
    n_images, height, width, channels = x.shape
    out = np.empty((n_images, 1, 1, channels), dtype=np.float32)
    pixels = x.reshape(n_images, height * width, channels)
    area = height * width
    blocks = (channels + AVG_BLOCK - 1) // AVG_BLOCK
    for job in prange(n_images * blocks):
        n, first = job // blocks, job % blocks * AVG_BLOCK
        end = min(first + AVG_BLOCK, channels)
        means = out[n, 0, 0]
        c = first
        while c + 16 <= end:
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = 0.0
            for p in range(area):
                v = pixels[n, p]
                s0 += v[c]; s1 += v[c + 1]; s2 += v[c + 2]; s3 += v[c + 3]  # noqa: E702
                s4 += v[c + 4]; s5 += v[c + 5]; s6 += v[c + 6]; s7 += v[c + 7]  # noqa: E702
                s8 += v[c + 8]; s9 += v[c + 9]; s10 += v[c + 10]; s11 += v[c + 11]  # noqa: E702
                s12 += v[c + 12]; s13 += v[c + 13]; s14 += v[c + 14]; s15 += v[c + 15]  # noqa: E702
            means[c] = s0 / area; means[c + 1] = s1 / area; means[c + 2] = s2 / area  # noqa: E702
            means[c + 3] = s3 / area; means[c + 4] = s4 / area; means[c + 5] = s5 / area  # noqa: E702
            means[c + 6] = s6 / area; means[c + 7] = s7 / area; means[c + 8] = s8 / area  # noqa: E702
            means[c + 9] = s9 / area; means[c + 10] = s10 / area; means[c + 11] = s11 / area  # noqa: E702
            means[c + 12] = s12 / area; means[c + 13] = s13 / area; means[c + 14] = s14 / area  # noqa: E702
            means[c + 15] = s15 / area
            c += 16
        for rest in range(c, end):
            total = 0.0
            for p in range(area):
                total += pixels[n, p, rest]
            means[rest] = total / area
    return out


@njit(parallel=True, cache=True)
def maxpool_argmax(x, size, stride, padding, out, where):
    """maxpool() that also records, per output, the flat index within its image of the input
    value that won ((y * W + x) * C + c): the first strict maximum in window order (Darknet's),
    -1 where none beat -FLT_MAX. out and where: (N, OH, OW, C)."""
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
            if y1 - y0 == 2 and x1 - x0 == 2:  # most windows: four cells in one pass, in window order
                first = (y0 * width + x0) * channels
                below = first + width * channels
                a, b, c0, d = x[n, y0, x0], x[n, y0, x0 + 1], x[n, y0 + 1, x0], x[n, y0 + 1, x0 + 1]
                for c in range(channels):
                    top, at = (a[c], first + c) if a[c] > LOWEST else (LOWEST, -1)
                    top, at = (b[c], first + channels + c) if b[c] > top else (top, at)
                    top, at = (c0[c], below + c) if c0[c] > top else (top, at)
                    top, at = (d[c], below + channels + c) if d[c] > top else (top, at)
                    best[c], won[c] = top, at
                continue
            if y0 >= y1 or x0 >= x1:  # a window wholly in the padding
                best[:] = LOWEST
                won[:] = -1
            for y in range(y0, y1):
                for xx in range(x0, x1):
                    cell = x[n, y, xx]
                    first = (y * width + xx) * channels
                    if y == y0 and xx == x0:  # against -FLT_MAX and -1: no pass setting them first
                        for c in range(channels):
                            better = cell[c] > LOWEST
                            best[c] = cell[c] if better else LOWEST
                            won[c] = first + c if better else -1
                        continue
                    for c in range(channels):  # selects, no branch: LLVM vectorizes it
                        better = cell[c] > best[c]
                        best[c] = cell[c] if better else best[c]
                        won[c] = first + c if better else won[c]


@njit(parallel=True, cache=True)
def maxpool_backward(dy, where, size, stride, padding, dx, add):
    """dx = the gradient of maxpool_argmax: each input value gets the dy of every output
    whose window it won (0 if none), added to dx where `add`. A gather, in parallel over
    input rows: each value sums its (at most ceil(size/stride)^2) windows in output order, so
    no two jobs write one value and the sums do not depend on the threads; and no pass zeroes
    dx first."""
    n_images, out_h, out_w, channels = dy.shape
    _, height, width, _ = dx.shape
    offset = padding // 2
    for job in prange(n_images * height):
        n, y = job // height, job % height
        # Outputs i whose window rows i*stride - offset .. + size - 1 hold y.
        i0 = max(0, (y + offset - size + stride) // stride)
        i1 = min(out_h - 1, (y + offset) // stride)
        for xx in range(width):
            j0 = max(0, (xx + offset - size + stride) // stride)
            j1 = min(out_w - 1, (xx + offset) // stride)
            target = dx[n, y, xx]
            first = (y * width + xx) * channels
            if not add:
                target[:] = 0.0
            for i in range(i0, i1 + 1):
                for j in range(j0, j1 + 1):
                    won, grad = where[n, i, j], dy[n, i, j]
                    for c in range(channels):  # a select, no branch: LLVM vectorizes it
                        target[c] += grad[c] if won[c] == first + c else np.float32(0.0)


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
