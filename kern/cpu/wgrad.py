"""The weight gradient of a convolution: a GEMM whose reduction runs over pixels.

For one group, with P output pixels (of all images), depth = K*K*C/G taps and F/G filters:
    dW[f, k] = sum_p dz[p, f] * input[p, k]
where input[p, k] is tap k = (ky, kx, c) of pixel p's receptive field, read where it lies in
the zero-padded NHWC images (the forward GEMM's tables, gemm.gemm_tables: no im2col copy).

The micro-kernel is the forward one with the roles turned: a tile of 6 taps x 16 filters in 12
vector registers; per pixel it loads the 16 filters' gradients (dz's row, two float32x8),
broadcasts the pixel's 6 taps and does 12 fused multiply-adds. Pixels are summed in chunks
of CHUNK_PIXELS (the chunk's gradients stay in L1 while every tap tile of a job reads them);
each chunk's sums are added to the tile in memory, in chunk order.

Deterministic: each dW element is summed by one job, over the pixels in the same order
(within a chunk, then chunk by chunk), however many threads run and however the jobs are cut.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.gemm import TILE_M, TILE_P, gemm_tables
from kern.cpu.simd import add8, broadcast8, fma8, load8, splat8, store8

CHUNK_PIXELS = 256  # dz's 16-filter rows of a chunk: 16 KB, in L1 across a job's tap tiles
TILES_PER_JOB = 4  # tap tiles of 6 per job, at most (more jobs where there are few panels)


def padded_gradients(dz: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """dz (N, OH, OW, F) as rows of G groups of a multiple of 16 columns each, zero-padded
    where a group's filters are not (so every panel load of 16 is whole): (P, G * F16), F16."""
    pixels = dz.shape[0] * dz.shape[1] * dz.shape[2]
    per_group = dz.shape[3] // groups
    width = -(-per_group // TILE_M) * TILE_M
    rows = dz.reshape(pixels, groups, per_group)
    if width == per_group:
        return rows.reshape(pixels, -1), width
    padded = np.zeros((pixels, groups, width), dtype=np.float32)
    padded[:, :, :per_group] = rows
    return padded.reshape(pixels, -1), width


@njit(parallel=True, cache=True)
def weight_gradient(images, grads, width, ksize, stride, groups, out_h, out_w, tiles_per_job, dw):
    """images (N, H, W, C), zero-padded already; grads (P, G * width) from padded_gradients,
    P = N * out_h * out_w; dw (G, depth, width) float32, overwritten with the sums."""
    n_images, _, _, channels = images.shape
    _, depth, _ = dw.shape
    group_channels = channels // groups
    flat = images.reshape(-1)
    out_shape = (n_images, out_h, out_w, groups * width)
    taps, starts, _ = gemm_tables(images.shape, ksize, stride, depth, groups, out_shape, 1, 0)
    pixels = starts.size
    row_width = grads.shape[1]
    flat_grads = grads.reshape(-1)
    panels = width // TILE_M
    k_tiles = (depth + TILE_P - 1) // TILE_P
    k_jobs = (k_tiles + tiles_per_job - 1) // tiles_per_job
    last_tap = depth - 1
    for job in prange(groups * panels * k_jobs):
        k_job = job % k_jobs
        panel = job // k_jobs % panels
        g = job // (k_jobs * panels)
        base = g * group_channels
        column = g * width + panel * TILE_M  # the panel's first column in grads' rows
        target = dw[g]
        first_tile = k_job * tiles_per_job
        last_tile = min(k_tiles, first_tile + tiles_per_job)
        for tile in range(first_tile, last_tile):
            for j in range(TILE_P):
                if tile * TILE_P + j <= last_tap:
                    target[tile * TILE_P + j, panel * TILE_M : panel * TILE_M + TILE_M] = 0.0
        for chunk_start in range(0, pixels, CHUNK_PIXELS):
            chunk_end = min(pixels, chunk_start + CHUNK_PIXELS)
            for tile in range(first_tile, last_tile):
                k = tile * TILE_P
                # Taps past the last one re-read it; their sums are not stored.
                t0 = taps[k] + base
                t1 = taps[min(k + 1, last_tap)] + base
                t2 = taps[min(k + 2, last_tap)] + base
                t3 = taps[min(k + 3, last_tap)] + base
                t4 = taps[min(k + 4, last_tap)] + base
                t5 = taps[min(k + 5, last_tap)] + base
                c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = splat8(0.0)
                for p in range(chunk_start, chunk_end):
                    at = p * row_width + column
                    w0 = load8(flat_grads, at)
                    w1 = load8(flat_grads, at + 8)
                    s = starts[p]
                    x = broadcast8(flat, s + t0)
                    c00 = fma8(x, w0, c00)
                    c01 = fma8(x, w1, c01)
                    x = broadcast8(flat, s + t1)
                    c10 = fma8(x, w0, c10)
                    c11 = fma8(x, w1, c11)
                    x = broadcast8(flat, s + t2)
                    c20 = fma8(x, w0, c20)
                    c21 = fma8(x, w1, c21)
                    x = broadcast8(flat, s + t3)
                    c30 = fma8(x, w0, c30)
                    c31 = fma8(x, w1, c31)
                    x = broadcast8(flat, s + t4)
                    c40 = fma8(x, w0, c40)
                    c41 = fma8(x, w1, c41)
                    x = broadcast8(flat, s + t5)
                    c50 = fma8(x, w0, c50)
                    c51 = fma8(x, w1, c51)
                o = panel * TILE_M
                _add_row(target, k, o, c00, c01)
                if k + 1 <= last_tap:
                    _add_row(target, k + 1, o, c10, c11)
                if k + 2 <= last_tap:
                    _add_row(target, k + 2, o, c20, c21)
                if k + 3 <= last_tap:
                    _add_row(target, k + 3, o, c30, c31)
                if k + 4 <= last_tap:
                    _add_row(target, k + 4, o, c40, c41)
                if k + 5 <= last_tap:
                    _add_row(target, k + 5, o, c50, c51)


@njit(inline="always", cache=True)
def _add_row(target, k, o, c0, c1):
    """target[k, o : o + 16] += the two accumulators (one chunk's sums)."""
    row = target[k]
    store8(row, o, add8(load8(row, o), c0))
    store8(row, o + 8, add8(load8(row, o + 8), c1))


def conv2d_backward_weights(
    images: np.ndarray, dz: np.ndarray, ksize: int, stride: int, groups: int, tiles_per_job: int = TILES_PER_JOB
) -> np.ndarray:
    """dL/dW (F, C/G, K, K) from the zero-padded NHWC input and dL/dz (N, OH, OW, F)."""
    n_images, out_h, out_w, filters = dz.shape
    group_channels = images.shape[3] // groups
    depth = ksize * ksize * group_channels
    grads, width = padded_gradients(np.ascontiguousarray(dz), groups)
    dw = np.empty((groups, depth, width), dtype=np.float32)
    weight_gradient(images, grads, width, ksize, stride, groups, out_h, out_w, tiles_per_job, dw)
    per_group = filters // groups
    taps = dw[:, :, :per_group].reshape(groups, ksize, ksize, group_channels, per_group)
    return np.ascontiguousarray(taps.transpose(0, 4, 3, 1, 2).reshape(filters, group_channels, ksize, ksize))
