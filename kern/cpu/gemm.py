"""The one compute kernel behind convolution and the connected layer: a GEMM, by hand.

For one image, with P output pixels, F filters in G groups of `rows`, and depth = K*K*C/G:
out[p, g*rows + m] = activation(sum_k input[p, g, k] * weights[g, m, k] + bias[g*rows + m])
and, when a residual is given (a shortcut fused into the convolution before it):
out[p, o] = residual_activation(out[p, o] + residual[p, o])

input[p, g, k] is tap k = (ky, kx, c) of pixel p's receptive field, channel g*C/G + c. The
usual way builds that matrix first (im2col, or im2row in channels-last); here the kernel reads
each tap from the zero-padded NHWC image where it lies: image[start(p) + taps[k]], with a
table of `depth` offsets. No copy of K*K times the image, and a 1x1 stride-1 convolution
reads the image itself. The weights are packed at load time by `pack_panels` into panels of
16 filters: panel[k, 0:16] is tap k of those 16 filters, so one step of k reads 16
contiguous weights.

The micro-kernel is an outer product. A tile of 6 pixels x 16 filters lives in 12 vector
registers (simd.float32x8, two per pixel); per step of k it loads the 16 weights as two
vectors, broadcasts each pixel's input, and does 12 fused multiply-adds. That is the shape of
the AVX2 kernels in BLIS and OpenBLAS (6x16, 12 of the 16 ymm registers). The output tile is
then stored as whole vectors, with bias, activation and the residual applied in registers.

An earlier kernel here computed 4x3 dot products with k innermost (docs/numba.md), which
LLVM vectorizes by itself, on rows built by im2row. It spent its time outside the
multiply-adds: 12 horizontal sums and 12 scalar stores per tile, and the im2row copy (5.8 ms
of a 224x224 RGB layer whose GEMM took 0.6). On 2 cores it ran darknet19's 3x3 layers at
~100 GFLOP/s; this one runs them at 155-177 (of about 190 peak), and darknet19 went from 71
to 50 ms (python -m bench.scaling / bench.nets).

Pixels past the last one re-read the last pixel and skip the store. Work is split over
output tiles, never over k: each output is summed by one thread in a fixed order, so results
are identical for every thread count.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import RELU, finish_outputs, rectify8, rectify16
from kern.cpu.simd import (
    add8,
    add16,
    broadcast8,
    broadcast16,
    fma8,
    fma16,
    lane8,
    lane16,
    load8,
    load16,
    splat8,
    splat16,
    store8,
    store16,
)

TILE_P, TILE_M = 6, 16  # the register tile: pixels x filters (two float32x8 per pixel)
CHUNK_PIXELS = 24  # pixels one job runs against one weight panel (the panel stays in L1)
WHOLE_COLUMN_PIXELS = 96  # up to this many pixels, a job runs them all: each panel read once
MANY_PANELS = 16  # ... where there are this many panels or more (else too few jobs)
# Weights over 2 MB (more than a core's L2) come again from L3 or memory for every chunk of
# pixels: then a job takes WHOLE_COLUMN_PIXELS, so they come 4x less often. Kernel alone,
# interleaved A/B on a quiet host (AMD EPYC, 2 threads, 24 -> 96 pixels, two runs): 8x8x512 ->
# 1024 3x3 at batch 8 0.76-0.87x the time, 14x14x512 -> 1024 at batch 1 0.87x, 16x16x256 ->
# 512 0.75x, 14x14x256 -> 512 0.80x, 7x7x512 -> 2048 1x1 at batch 8 0.83x; 28x28x256 -> 512
# 0.99-1.06x (the worst seen).
BIG_WEIGHTS_BYTES = 2 << 20


def pack_panels(weights: np.ndarray) -> np.ndarray:
    """(groups, rows, depth) -> (groups, rows/16 rounded up, depth, 16): each panel holds 16
    filters side by side, tap-major; filters past `rows` are zeros."""
    groups, rows, depth = weights.shape
    panels = np.zeros((groups, -(-rows // TILE_M), depth, TILE_M), dtype=np.float32)
    for block in range(panels.shape[1]):  # one panel at a time: no second full-size copy
        filters = weights[:, block * TILE_M : (block + 1) * TILE_M]
        panels[:, block, :, : filters.shape[1]] = filters.transpose(0, 2, 1)
    return panels


@njit(inline="always", cache=True)
def store_sums(out, p, o, count, c0, c1):
    """out[p, o : o + count] = a pixel's two accumulators, as they are (count <= 16)."""
    row = out[p]
    if count == TILE_M:
        store8(row, o, c0)
        store8(row, o + 8, c1)
    else:
        for j in range(count):
            row[o + j] = lane8(c0, j) if j < 8 else lane8(c1, j - 8)


@njit(inline="always", cache=True)
def finish_tile(out_at, residual, p, n_pixels, column, o, count, bias, act, residual_act):
    """Bias, activation and the fused shortcut on filters o .. o + count - 1 of pixels
    p .. p + n_pixels - 1 (out[out_row[q] + plane_rows, column:] for (out, out_row,
    plane_rows) = out_at), in place, just after store_sums (the tile is still in L1), through
    activation.finish_outputs: one compiled copy of every activation for all kernels (six
    inlined copies, one per pixel, made conv_gemm compile in 35 s)."""
    out, out_row, plane_rows = out_at
    for q in range(p, p + n_pixels):
        finish_outputs(out[out_row[q] + plane_rows], column, bias, o, count, act, residual[q], residual_act)


@njit(inline="always", cache=True)
def rectify_tile(out_at, residual, p, n_pixels, column, o, bias, act, residual_act):
    """finish_tile for a whole panel whose activation and shortcut's are linear, leaky or relu,
    inlined (a max at most: cheap to compile); the same operations, the same bits."""
    out, out_row, plane_rows = out_at
    for q in range(p, p + n_pixels):
        row = out[out_row[q] + plane_rows]
        for half in range(0, TILE_M, 8):
            v = rectify8(add8(load8(row, column + half), load8(bias, o + half)), act)
            if residual_act >= 0:
                v = rectify8(add8(v, load8(residual[q], o + half)), residual_act)
            store8(row, column + half, v)


@njit(cache=True)
def gemm_tables(image_shape, ksize, stride, depth, groups, out_shape, planes, out_padding):
    """conv_gemm's index tables (ksize: the kernel's width; its height is depth / (width *
    channels), so non-square kernels need nothing more): where tap k (ky, kx, c) lies relative
    to a pixel's first input (the GEMM's column index, `taps`), where each output pixel's receptive field starts
    (its row index, `starts`), and its row of out (of plane 0, `out_row`)."""
    n_images, height, width, channels = image_shape
    _, padded_h, padded_w, _ = out_shape
    out_h, out_w = padded_h - 2 * out_padding, padded_w - 2 * out_padding
    group_channels = channels // groups
    taps = np.empty(depth, dtype=np.int64)
    for k in range(depth):
        ky, kx, c = k // (ksize * group_channels), k // group_channels % ksize, k % group_channels
        taps[k] = (ky * width + kx) * channels + c
    per_image = out_h * out_w
    starts = np.empty(n_images * per_image, dtype=np.int64)
    out_row = np.empty(n_images * per_image, dtype=np.int64)
    for n in range(n_images):
        for oy in range(out_h):
            for ox in range(out_w):
                p = n * per_image + oy * out_w + ox
                starts[p] = ((n * height + oy * stride) * width + ox * stride) * channels
                out_row[p] = (n * planes * padded_h + oy + out_padding) * padded_w + ox + out_padding
    return taps, starts, out_row


@njit(inline="always", cache=True)
def chunk_tiles(p_tiles, tile_pixels, panels):
    """Pixel tiles per job for both GEMMs (tiles of tile_pixels, `panels` as packed): the
    same pixels per job for every vector width. Only which thread sums what changes."""
    groups, m_blocks, _, _ = panels.shape
    if p_tiles * tile_pixels <= WHOLE_COLUMN_PIXELS and groups * m_blocks >= MANY_PANELS:
        return p_tiles  # few pixels, many weights (late layers, connected): read weights once
    big = panels.size * 4 > BIG_WEIGHTS_BYTES
    return (WHOLE_COLUMN_PIXELS if big else CHUNK_PIXELS) // tile_pixels


@njit(parallel=True, cache=True)
def conv_gemm(images, panels, bias, act, ksize, stride, out, planes, out_padding, residual, residual_act):
    """images (N, H, W, C), zero-padded already; panels (G, M/16, K*K*C/G, 16) from
    pack_panels; bias (F,); residual (N, OH, OW, F), read only when residual_act >= 0 (pass
    out itself and -1 for none). All C-contiguous.

    out is (N, OH, OW, F), or (N * planes, OH + 2q, OW + 2q, F / planes) for the next layer
    (q = out_padding): filters o .. o + F/planes - 1 as one zero-padded image each, written
    inside the border, which is left as it is (grouped.conv_lane_groups reads that).

    The GEMM's matrix of input rows is never built (no im2row): tap k of pixel p is read from
    the images where it lies, images.flat[starts[p] + taps[k]]. The rows are the pixels of
    all N images: a batch shares each weight panel it reads.
    """
    _, padded_h, padded_w, plane_filters = out.shape
    filters = planes * plane_filters
    groups, m_blocks, depth, _ = panels.shape
    rows = filters // groups
    group_channels = images.shape[3] // groups
    flat = images.reshape(-1)
    tables = gemm_tables(images.shape, ksize, stride, depth, groups, out.shape, planes, out_padding)
    taps, starts, out_row = tables
    pixels = starts.size
    out_rows = out.reshape(-1, plane_filters)
    residual_rows = residual.reshape(-1, filters)
    p_tiles = (pixels + TILE_P - 1) // TILE_P
    chunk = chunk_tiles(p_tiles, TILE_P, panels)
    chunks = (p_tiles + chunk - 1) // chunk
    last = pixels - 1
    # Consecutive jobs share a chunk of pixels and walk the weight panels, group by group: the
    # next group's inputs are the next channels of the same pixels, often the same cache lines.
    for job in prange(groups * chunks * m_blocks):
        m_block = job % m_blocks
        g = job // m_blocks % groups
        first_tile = job // (m_blocks * groups) * chunk
        panel = panels[g, m_block]
        base = g * group_channels  # the group's first input channel
        o = g * rows + m_block * TILE_M
        plane_rows = o // plane_filters * padded_h * padded_w  # a panel lies in one plane
        column = o % plane_filters
        count = min(TILE_M, rows - m_block * TILE_M)
        rectified = count == TILE_M and act <= RELU and residual_act <= RELU  # Darknet's, Caffe's
        for tile in range(first_tile, min(p_tiles, first_tile + chunk)):
            p = tile * TILE_P
            # Pixels past the last one re-read it; their stores are skipped.
            s0 = starts[p] + base
            s1 = starts[min(p + 1, last)] + base
            s2 = starts[min(p + 2, last)] + base
            s3 = starts[min(p + 3, last)] + base
            s4 = starts[min(p + 4, last)] + base
            s5 = starts[min(p + 5, last)] + base
            # Unrolled by hand: only separately named accumulators stay in registers.
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = splat8(0.0)
            for k in range(depth):
                w0 = load8(panel, TILE_M * k)  # filters 0..7 of the panel, tap k
                w1 = load8(panel, TILE_M * k + 8)  # filters 8..15
                tap = taps[k]
                x = broadcast8(flat, s0 + tap)
                c00 = fma8(x, w0, c00)
                c01 = fma8(x, w1, c01)
                x = broadcast8(flat, s1 + tap)
                c10 = fma8(x, w0, c10)
                c11 = fma8(x, w1, c11)
                x = broadcast8(flat, s2 + tap)
                c20 = fma8(x, w0, c20)
                c21 = fma8(x, w1, c21)
                x = broadcast8(flat, s3 + tap)
                c30 = fma8(x, w0, c30)
                c31 = fma8(x, w1, c31)
                x = broadcast8(flat, s4 + tap)
                c40 = fma8(x, w0, c40)
                c41 = fma8(x, w1, c41)
                x = broadcast8(flat, s5 + tap)
                c50 = fma8(x, w0, c50)
                c51 = fma8(x, w1, c51)
            store_sums(out_rows, out_row[p] + plane_rows, column, count, c00, c01)
            if p + 1 < pixels:
                store_sums(out_rows, out_row[p + 1] + plane_rows, column, count, c10, c11)
            if p + 2 < pixels:
                store_sums(out_rows, out_row[p + 2] + plane_rows, column, count, c20, c21)
            if p + 3 < pixels:
                store_sums(out_rows, out_row[p + 3] + plane_rows, column, count, c30, c31)
            if p + 4 < pixels:
                store_sums(out_rows, out_row[p + 4] + plane_rows, column, count, c40, c41)
            if p + 5 < pixels:
                store_sums(out_rows, out_row[p + 5] + plane_rows, column, count, c50, c51)
            n_tile = min(TILE_P, pixels - p)
            out_at = out_rows, out_row, plane_rows
            if rectified:
                rectify_tile(out_at, residual_rows, p, n_tile, column, o, bias, act, residual_act)
            else:
                finish_tile(out_at, residual_rows, p, n_tile, column, o, count, bias, act, residual_act)


# ---- sixteen lanes (AVX-512) ------------------------------------------------------------------
# The same GEMM with one 16-lane vector per pixel and panel: a tile of 6 pixels x 32 filters (two
# panels side by side) in 12 zmm accumulators. Per step of k it loads the two panels' 16 weights
# as one vector each, broadcasts 6 inputs, and does 12 fused multiply-adds of 16 lanes: 192
# multiply-adds for 8 loads, where the 8-lane kernel does 96. kern.cpu.simd_choice picks it
# where the CPU has AVX-512F; on an AVX2 CPU (KERN_SIMD=avx512) LLVM splits each vector in two
# and the 24 halves spill: correct, slower, which is how the tests check it on any machine.
#
# Why 6 pixels and not 12 x 16 (12 accumulators on one panel, the kernel before): the tile's
# pixels are read side by side, a cache line each, and where a pixel's channels take a
# multiple of 4 KB (1024 or 2048 channels) all those lines fall in one set of the 8-way L1
# cache: twelve of them (and the panel's line) evict each other at every step of k; six fit.
# Kernel alone, AMD EPYC Zen 4, 2 threads, 1x1 at batch 8, GFLOP/s 12 x 16 -> 6 x 32:
# 16x16x1024 -> 512 125 -> 212, 8x8x2048 -> 1024 114 -> 190, 8x8x1024 -> 2048 112 -> 190,
# 14x14x1024 -> 1000 at batch 1 87 -> 146; 3x3 and narrower layers the same or 2-5% faster.
TILE_P16 = 6


@njit(inline="always", cache=True)
def store_sums16(out, p, o, count, c):
    """out[p, o : o + count] = a pixel's accumulator (count <= 16)."""
    row = out[p]
    if count == TILE_M:
        store16(row, o, c)
    else:
        for j in range(count):
            row[o + j] = lane16(c, j)


@njit(inline="always", cache=True)
def panel_at(tile_at, m_block, rows, plane_size):
    """Where panel m_block of a tile goes (tile_at = out_rows, out_row, p, pixels, the group's
    first filter): its first filter o, the rows of its plane, its column there, its filters."""
    out_rows, _, _, _, group_first = tile_at
    o = group_first + m_block * TILE_M
    plane_filters = out_rows.shape[1]
    plane_rows = o // plane_filters * plane_size  # a panel lies in one plane
    return o, plane_rows, o % plane_filters, min(TILE_M, rows - m_block * TILE_M)


@njit(inline="always", cache=True)
def store_panel16(tile_at, m_block, rows, plane_size, sums, finish):
    """Store one panel's 6 x 16 accumulators (`sums`, pixels p.. of the tile) and return
    whether they are finished (finish = residual, bias, act, residual_act). A whole panel whose
    activation and shortcut's are linear, leaky or relu (Darknet's and Caffe's layers) gets
    bias, activation and the shortcut in registers, one pixel at a time, stored once. Anything
    else is stored as it is, and the caller finishes it in place with finish_tile, whose one
    copy of every activation serves both panels: an inlined copy per panel made conv_gemm16
    compile in 12 s. Both do what conv_gemm does, lane by lane."""
    out_rows, out_row, p, pixels, _ = tile_at
    residual, bias, act, residual_act = finish
    o, plane_rows, column, count = panel_at(tile_at, m_block, rows, plane_size)
    n_tile = min(TILE_P16, pixels - p)
    if count == TILE_M and act <= RELU and residual_act <= RELU:
        b = load16(bias, o)
        for q in range(n_tile):
            v = rectify16(add16(sums[q], b), act)
            if residual_act >= 0:
                v = rectify16(add16(v, load16(residual[p + q], o)), residual_act)
            store16(out_rows[out_row[p + q] + plane_rows], column, v)
        return True
    for q in range(n_tile):
        store_sums16(out_rows, out_row[p + q] + plane_rows, column, count, sums[q])
    return False


@njit(inline="always", cache=True)
def sums_6x32(flat, firsts, taps, panel_a, panel_b):
    """The 6 x 32 tile's sums: pixels whose receptive fields start at flat[firsts[i]], against
    two panels; 12 accumulators (a0..a5 for panel_a, then b0..b5), k ascending."""
    s0, s1, s2, s3, s4, s5 = firsts
    a0 = a1 = a2 = a3 = a4 = a5 = b0 = b1 = b2 = b3 = b4 = b5 = splat16(0.0)
    for k in range(taps.size):
        wa = load16(panel_a, TILE_M * k)  # panel a's 16 filters, tap k
        wb = load16(panel_b, TILE_M * k)
        tap = taps[k]
        x = broadcast16(flat, s0 + tap)
        a0 = fma16(x, wa, a0)
        b0 = fma16(x, wb, b0)
        x = broadcast16(flat, s1 + tap)
        a1 = fma16(x, wa, a1)
        b1 = fma16(x, wb, b1)
        x = broadcast16(flat, s2 + tap)
        a2 = fma16(x, wa, a2)
        b2 = fma16(x, wb, b2)
        x = broadcast16(flat, s3 + tap)
        a3 = fma16(x, wa, a3)
        b3 = fma16(x, wb, b3)
        x = broadcast16(flat, s4 + tap)
        a4 = fma16(x, wa, a4)
        b4 = fma16(x, wb, b4)
        x = broadcast16(flat, s5 + tap)
        a5 = fma16(x, wa, a5)
        b5 = fma16(x, wb, b5)
    return a0, a1, a2, a3, a4, a5, b0, b1, b2, b3, b4, b5


@njit(inline="always", cache=True)
def sums_6x16(flat, firsts, taps, panel):
    """sums_6x32 for one panel."""
    s0, s1, s2, s3, s4, s5 = firsts
    a0 = a1 = a2 = a3 = a4 = a5 = splat16(0.0)
    for k in range(taps.size):
        w = load16(panel, TILE_M * k)
        tap = taps[k]
        a0 = fma16(broadcast16(flat, s0 + tap), w, a0)
        a1 = fma16(broadcast16(flat, s1 + tap), w, a1)
        a2 = fma16(broadcast16(flat, s2 + tap), w, a2)
        a3 = fma16(broadcast16(flat, s3 + tap), w, a3)
        a4 = fma16(broadcast16(flat, s4 + tap), w, a4)
        a5 = fma16(broadcast16(flat, s5 + tap), w, a5)
    return a0, a1, a2, a3, a4, a5


@njit(parallel=True, cache=True)
def conv_gemm16(images, panels, bias, act, ksize, stride, out, planes, out_padding, residual, residual_act):
    """conv_gemm with 16-lane vectors, the same arguments. Every output is the same sum in the
    same order (k ascending, one fused multiply-add per tap, then the same store), so the
    result is conv_gemm's, bit for bit (tests/test_simd_paths.py)."""
    _, padded_h, padded_w, plane_filters = out.shape
    filters = planes * plane_filters
    groups, m_blocks, depth, _ = panels.shape
    rows = filters // groups
    group_channels = images.shape[3] // groups
    flat = images.reshape(-1)
    tables = gemm_tables(images.shape, ksize, stride, depth, groups, out.shape, planes, out_padding)
    taps, starts, out_row = tables
    pixels = starts.size
    out_rows = out.reshape(-1, plane_filters)
    residual_rows = residual.reshape(-1, filters)
    p_tiles = (pixels + TILE_P16 - 1) // TILE_P16
    chunk = chunk_tiles(p_tiles, TILE_P16, panels)
    chunks = (p_tiles + chunk - 1) // chunk
    m_pairs = (m_blocks + 1) // 2
    last = pixels - 1
    finish = residual_rows, bias, act, residual_act
    plane_size = padded_h * padded_w
    for job in prange(groups * chunks * m_pairs):
        pair = job % m_pairs
        g = job // m_pairs % groups
        first_tile = job // (m_pairs * groups) * chunk
        m_a = 2 * pair
        m_b = min(m_a + 1, m_blocks - 1)  # m_b == m_a: an odd last panel, alone
        panel_a, panel_b = panels[g, m_a], panels[g, m_b]
        base = g * group_channels
        for tile in range(first_tile, min(p_tiles, first_tile + chunk)):
            p = tile * TILE_P16
            s0 = starts[p] + base
            s1 = starts[min(p + 1, last)] + base
            s2 = starts[min(p + 2, last)] + base
            s3 = starts[min(p + 3, last)] + base
            s4 = starts[min(p + 4, last)] + base
            s5 = starts[min(p + 5, last)] + base
            firsts = (s0, s1, s2, s3, s4, s5)
            tile_at = out_rows, out_row, p, pixels, g * rows
            if m_b != m_a:
                sums = sums_6x32(flat, firsts, taps, panel_a, panel_b)
            else:  # an odd last panel, alone
                alone = sums_6x16(flat, firsts, taps, panel_a)
                sums = alone + alone
            finished_a = store_panel16(tile_at, m_a, rows, plane_size, sums[:6], finish)
            finished_b = m_b == m_a or store_panel16(tile_at, m_b, rows, plane_size, sums[6:], finish)
            if not (finished_a and finished_b):
                # Logistic, tanh or a partial panel: one copy of the whole finish, in a loop.
                for m_block in range(m_a, m_b + 1):
                    if not (finished_a if m_block == m_a else finished_b):
                        o, plane_rows, column, count = panel_at(tile_at, m_block, rows, plane_size)
                        out_at = out_rows, out_row, plane_rows
                        n_tile = min(TILE_P16, pixels - p)
                        finish_tile(out_at, residual_rows, p, n_tile, column, o, count, bias, act, residual_act)
