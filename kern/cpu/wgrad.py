"""The weight gradient of a convolution: a GEMM whose reduction runs over pixels.

For one group, with P output pixels (of all images), depth = K*K*C/G taps and F/G filters:
    dW[f, k] = sum_p dz[p, f] * input[p, k]
where input[p, k] is tap k = (ky, kx, c) of pixel p's receptive field, read where it lies in
the zero-padded NHWC images (the forward GEMM's tables, gemm.gemm_tables: no im2col copy).

The micro-kernel is the forward one with the roles turned: a tile of 6 taps x 16 filters in 12
vector registers; per pixel it loads the 16 filters' gradients (dz's row, two float32x8),
broadcasts the pixel's 6 taps and does 12 fused multiply-adds. Pixels are summed in chunks
of CHUNK_PIXELS: a job first copies the chunk's gradients of its panels out of dz's rows,
16 filters per pixel one after another (_chunk_panels), and they stay in L1 while every tap
tile of the job reads them; each chunk's sums are added to the tile in memory, in chunk
order. A job is a filter panel and as many of its taps as the thread count allows (all of
them where there are panels enough): every job reads all of dz's and the input's pixels
once, so fewer, longer jobs read less. With 4 tap tiles per job, 128 -> 128 3x3 on 28x28 ran
at 22 GFLOP/s; with all, 67 (batch 32, AMD EPYC Zen 4, 1 thread).

A small dW (up to SMALL_GRADIENT floats: a first layer's 27 taps x 32 filters, the narrow
layers of CIFAR nets) is summed in blocks of pixels, a job each, then the blocks added in
order: split by taps, every job read all of dz (12.8 MB for cifar_small's first layer at
batch 128, three times over at 2 threads), and its 3 -> 32 3x3 weight gradient took 3.0 ms
(58 GFLOP/s); in blocks 1.7 (AMD EPYC Zen 4, 2 threads).

Deterministic: each dW element is summed by one job per block, over the block's pixels in the
same order (within a chunk, then chunk by chunk), and the blocks in order; how many blocks
depends on the shape alone: the same bits however many threads run and however the jobs are
cut.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.buffers import Empty, new_array
from kern.cpu.gemm import TILE_M, TILE_P, gemm_tables
from kern.cpu.simd import (
    add8,
    add16,
    broadcast8,
    broadcast16,
    fma8,
    fma16,
    load8,
    load16,
    splat8,
    splat16,
    store8,
    store16,
)

TILE_K16 = 12  # taps per tile of the 16-lane kernel (12 zmm accumulators)
CHUNK_PIXELS = 128  # per chunk: the input's lines of a tap tile (8 KB) and dz's (8 KB per panel)
PANELS_PER_JOB = 4  # filter panels a job runs on each tap tile while its input lines are in L1
JOBS_PER_THREAD = 2  # where a layer has few panel groups, its taps are split to give this many
BLOCK_PIXELS = 2048  # a small dW is summed over blocks of about this many pixels, one job each
MAX_BLOCKS = 32
SMALL_GRADIENT = 1 << 16  # floats of dW (all groups) up to which it is summed in pixel blocks


@njit(inline="always", cache=True)
def _chunk_panels(rows, g, per_group, first_panel, last_panel, chunk_start, chunk_end, local):
    """local[i, p - chunk_start] = the 16 gradients of panel first_panel + i (of group g) at
    pixel p, zeros past the group's last filter: the chunk's dz, panel after panel, in L1 for
    every tap tile of the job. In dz's own rows a panel's pixels lie F floats apart: 4 KB for
    1024 filters, so every one of them fell in the same few sets of the L1 cache and a 3x3
    512 -> 1024 layer on 8 x 8 ran at 13 GFLOP/s (AMD EPYC Zen 3). Copied per chunk rather than
    packed in a pass of its own before: the pass wrote and read dz once more (1.97 ms of a
    2.85 ms kernel for 128 x 28 x 28 x 32, Zen 3, 2 threads)."""
    for panel in range(first_panel, last_panel):
        first = g * per_group + panel * TILE_M
        count = min(TILE_M, per_group - panel * TILE_M)
        block = local[panel - first_panel]
        for p in range(chunk_start, chunk_end):
            source, target = rows[p], block[p - chunk_start]
            if count == TILE_M:
                store8(target, 0, load8(source, first))
                store8(target, 8, load8(source, first + 8))
            else:
                for f in range(TILE_M):
                    target[f] = source[first + f] if f < count else np.float32(0.0)


@njit(cache=True)
def _block_pixels(pixels, blocks):
    """Pixels per block: whole chunks, the blocks as even as that allows."""
    chunks = (pixels + CHUNK_PIXELS - 1) // CHUNK_PIXELS
    return (chunks + blocks - 1) // blocks * CHUNK_PIXELS


def pixel_blocks(pixels: int, gradient_floats: int) -> int:
    """Blocks of pixels whose sums a weight gradient adds up at the end: one where dW is big
    (each block would need a copy of it); else about one per BLOCK_PIXELS, up to MAX_BLOCKS.
    From the shape alone, never the thread count: the sums are the same on every host."""
    if gradient_floats > SMALL_GRADIENT:
        return 1
    return max(1, min(MAX_BLOCKS, pixels // BLOCK_PIXELS))


@njit(cache=True)
def _jobs(groups, panels, k_tiles, tiles_per_job):
    """(panel groups, tap jobs) of a call: jobs are (group, panel group, tap range)."""
    return (panels + PANELS_PER_JOB - 1) // PANELS_PER_JOB, (k_tiles + tiles_per_job - 1) // tiles_per_job


@njit(parallel=True, cache=True)
def weight_gradient(images, rows, width, ksize, stride, groups, out_h, out_w, tiles_per_job, dw):
    """images (N, H, W, C), zero-padded already; rows: dz as (P, F), P = N * out_h * out_w;
    width: a group's filters rounded up to 16; dw (blocks, G, depth, width) float32, each
    block overwritten with the sums over its pixels."""
    n_images, _, _, channels = images.shape
    _, _, depth, _ = dw.shape
    group_channels = channels // groups
    flat = images.reshape(-1)
    out_shape = (n_images, out_h, out_w, groups * width)
    taps, starts, _ = gemm_tables(images.shape, ksize, stride, depth, groups, out_shape, 1, 0)
    pixels = starts.size
    per_group = rows.shape[1] // groups
    panels = width // TILE_M
    k_tiles = (depth + TILE_P - 1) // TILE_P
    panel_jobs, k_jobs = _jobs(groups, panels, k_tiles, tiles_per_job)
    last_tap = depth - 1
    blocks = dw.shape[0]
    block_pixels = _block_pixels(pixels, blocks)
    for job in prange(blocks * groups * panel_jobs * k_jobs):
        k_job = job % k_jobs
        first_panel = job // k_jobs % panel_jobs * PANELS_PER_JOB
        last_panel = min(panels, first_panel + PANELS_PER_JOB)
        g = job // (k_jobs * panel_jobs) % groups
        block = job // (k_jobs * panel_jobs * groups)
        base = g * group_channels
        target = dw[block, g]
        first_tile = k_job * tiles_per_job
        last_tile = min(k_tiles, first_tile + tiles_per_job)
        for k in range(first_tile * TILE_P, min(depth, last_tile * TILE_P)):
            target[k, first_panel * TILE_M : last_panel * TILE_M] = 0.0
        local = np.empty((PANELS_PER_JOB, CHUNK_PIXELS, TILE_M), dtype=np.float32)
        flat_local = local.reshape(-1)
        block_end = min(pixels, (block + 1) * block_pixels)
        for chunk_start in range(block * block_pixels, block_end, CHUNK_PIXELS):
            chunk_end = min(block_end, chunk_start + CHUNK_PIXELS)
            _chunk_panels(rows, g, per_group, first_panel, last_panel, chunk_start, chunk_end, local)
            for tile in range(first_tile, last_tile):
                k = tile * TILE_P
                # Taps past the last one re-read it; their sums are not stored.
                t0 = taps[k] + base
                t1 = taps[min(k + 1, last_tap)] + base
                t2 = taps[min(k + 2, last_tap)] + base
                t3 = taps[min(k + 3, last_tap)] + base
                t4 = taps[min(k + 4, last_tap)] + base
                t5 = taps[min(k + 5, last_tap)] + base
                for panel in range(first_panel, last_panel):
                    column = ((panel - first_panel) * CHUNK_PIXELS - chunk_start) * TILE_M  # its pixel 0
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = splat8(0.0)
                    for p in range(chunk_start, chunk_end):
                        at = column + p * TILE_M
                        w0 = load8(flat_local, at)
                        w1 = load8(flat_local, at + 8)
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


# ---- sixteen lanes (AVX-512): a tile of 12 taps x 16 filters in 12 zmm accumulators; per pixel
# one load of dz's 16 gradients, 12 broadcasts, 12 fused multiply-adds of 16 lanes (the 8-lane
# kernel: 2 loads and 6 broadcasts per 12 of 8). Every sum is the same, in the same order, as
# the 8-lane kernel's: bit for bit the same dW (tests/test_backward_cpu.py).


@njit(inline="always", cache=True)
def _add_row16(target, k, o, c):
    row = target[k]
    store16(row, o, add16(load16(row, o), c))


@njit(parallel=True, cache=True)
def weight_gradient16(images, rows, width, ksize, stride, groups, out_h, out_w, tiles_per_job, dw):
    """weight_gradient with 16-lane vectors and tiles of 12 taps; tiles_per_job counts those."""
    n_images, _, _, channels = images.shape
    _, _, depth, _ = dw.shape
    group_channels = channels // groups
    flat = images.reshape(-1)
    out_shape = (n_images, out_h, out_w, groups * width)
    taps, starts, _ = gemm_tables(images.shape, ksize, stride, depth, groups, out_shape, 1, 0)
    pixels = starts.size
    per_group = rows.shape[1] // groups
    panels = width // TILE_M
    k_tiles = (depth + TILE_K16 - 1) // TILE_K16
    panel_jobs, k_jobs = _jobs(groups, panels, k_tiles, tiles_per_job)
    last_tap = depth - 1
    blocks = dw.shape[0]
    block_pixels = _block_pixels(pixels, blocks)
    for job in prange(blocks * groups * panel_jobs * k_jobs):
        k_job = job % k_jobs
        first_panel = job // k_jobs % panel_jobs * PANELS_PER_JOB
        last_panel = min(panels, first_panel + PANELS_PER_JOB)
        g = job // (k_jobs * panel_jobs) % groups
        block = job // (k_jobs * panel_jobs * groups)
        base = g * group_channels
        target = dw[block, g]
        first_tile = k_job * tiles_per_job
        last_tile = min(k_tiles, first_tile + tiles_per_job)
        for k in range(first_tile * TILE_K16, min(depth, last_tile * TILE_K16)):
            target[k, first_panel * TILE_M : last_panel * TILE_M] = 0.0
        local = np.empty((PANELS_PER_JOB, CHUNK_PIXELS, TILE_M), dtype=np.float32)
        flat_local = local.reshape(-1)
        block_end = min(pixels, (block + 1) * block_pixels)
        for chunk_start in range(block * block_pixels, block_end, CHUNK_PIXELS):
            chunk_end = min(block_end, chunk_start + CHUNK_PIXELS)
            _chunk_panels(rows, g, per_group, first_panel, last_panel, chunk_start, chunk_end, local)
            for tile in range(first_tile, last_tile):
                k = tile * TILE_K16
                t0 = taps[k] + base
                t1 = taps[min(k + 1, last_tap)] + base
                t2 = taps[min(k + 2, last_tap)] + base
                t3 = taps[min(k + 3, last_tap)] + base
                t4 = taps[min(k + 4, last_tap)] + base
                t5 = taps[min(k + 5, last_tap)] + base
                t6 = taps[min(k + 6, last_tap)] + base
                t7 = taps[min(k + 7, last_tap)] + base
                t8 = taps[min(k + 8, last_tap)] + base
                t9 = taps[min(k + 9, last_tap)] + base
                t10 = taps[min(k + 10, last_tap)] + base
                t11 = taps[min(k + 11, last_tap)] + base
                for panel in range(first_panel, last_panel):
                    column = ((panel - first_panel) * CHUNK_PIXELS - chunk_start) * TILE_M
                    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = splat16(0.0)
                    for p in range(chunk_start, chunk_end):
                        w = load16(flat_local, column + p * TILE_M)
                        s = starts[p]
                        c0 = fma16(broadcast16(flat, s + t0), w, c0)
                        c1 = fma16(broadcast16(flat, s + t1), w, c1)
                        c2 = fma16(broadcast16(flat, s + t2), w, c2)
                        c3 = fma16(broadcast16(flat, s + t3), w, c3)
                        c4 = fma16(broadcast16(flat, s + t4), w, c4)
                        c5 = fma16(broadcast16(flat, s + t5), w, c5)
                        c6 = fma16(broadcast16(flat, s + t6), w, c6)
                        c7 = fma16(broadcast16(flat, s + t7), w, c7)
                        c8 = fma16(broadcast16(flat, s + t8), w, c8)
                        c9 = fma16(broadcast16(flat, s + t9), w, c9)
                        c10 = fma16(broadcast16(flat, s + t10), w, c10)
                        c11 = fma16(broadcast16(flat, s + t11), w, c11)
                    o = panel * TILE_M
                    _add_row16(target, k, o, c0)
                    for q, c in ((1, c1), (2, c2), (3, c3), (4, c4), (5, c5), (6, c6), (7, c7), (8, c8),
                                 (9, c9), (10, c10), (11, c11)):
                        if k + q <= last_tap:
                            _add_row16(target, k + q, o, c)


def tiles_per_job(depth: int, panels: int, threads: int, tile: int = TILE_P, blocks: int = 1) -> int:
    """Tap tiles (of `tile` taps) per job: all of them, unless the panel groups and pixel
    blocks alone give fewer than JOBS_PER_THREAD jobs per thread. (Only who sums what
    changes: not the order of any sum.)"""
    tiles = -(-depth // tile)
    panel_jobs = -(-panels // PANELS_PER_JOB) * blocks
    splits = max(1, -(-JOBS_PER_THREAD * threads // panel_jobs))
    return -(-tiles // min(splits, tiles))


def conv2d_backward_weights(
    images: np.ndarray, dz: np.ndarray, ksize: int, stride: int, groups: int, threads: int = 1, lanes: int = 8,
    into: np.ndarray | None = None, empty: Empty = new_array,
) -> np.ndarray:
    """dL/dW (F, C/G, K, K) from the zero-padded NHWC input and dL/dz (N, OH, OW, F), added
    into `into` where given (an update buffer; else a new zeroed one) and returned; lanes 8
    (weight_gradient) or 16 (weight_gradient16, AVX-512): the same result either way. empty:
    where the scratch arrays come from (kern/cpu/buffers.py)."""
    n_images, out_h, out_w, filters = dz.shape
    group_channels = images.shape[3] // groups
    depth = ksize * ksize * group_channels
    width = -(-(filters // groups) // TILE_M) * TILE_M  # a group's filters, rounded up to a panel
    rows = np.ascontiguousarray(dz).reshape(-1, filters)
    kernel, tile = (weight_gradient16, TILE_K16) if lanes == 16 else (weight_gradient, TILE_P)
    blocks = pixel_blocks(rows.shape[0], groups * depth * width)
    per_job = tiles_per_job(depth, groups * width // TILE_M, threads, tile, blocks)
    dw = empty((blocks, groups, depth, width))
    kernel(images, rows, width, ksize, stride, groups, out_h, out_w, per_job, dw)
    if into is None:
        into = np.zeros((filters, group_channels, ksize, ksize), dtype=np.float32)
    add_as_oihw(dw, ksize, filters // groups, into)
    return into


@njit(parallel=True, cache=True)
def add_as_oihw(dw, ksize, per_group, into):
    """into (F, C/G, K, K) += the sum of dw's blocks (each G, K*K*C/G taps in (ky, kx, c)
    order, F16), added block after block; 16 filters a job: each job reads one cache line of
    each of dw's rows. (NumPy's transpose of the same took 32 ms for a 3x3 512 -> 1024 layer,
    the weight gradient itself 7.)"""
    blocks, groups, _, _ = dw.shape
    group_channels = into.shape[1]
    filter_blocks = (per_group + TILE_M - 1) // TILE_M
    for job in prange(groups * filter_blocks):
        g = job // filter_blocks
        first = job % filter_blocks * TILE_M
        last = min(per_group, first + TILE_M)
        for c in range(group_channels):
            for ky in range(ksize):
                for kx in range(ksize):
                    tap = (ky * ksize + kx) * group_channels + c
                    for f in range(first, last):
                        total = dw[0, g, tap, f]
                        for block in range(1, blocks):
                            total += dw[block, g, tap, f]
                        into[g * per_group + f, c, ky, kx] += total
