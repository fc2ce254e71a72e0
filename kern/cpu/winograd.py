"""Winograd F(2x2, 3x3) for grouped.py's lane layout: 3x3, stride 1, padding 1 convolutions
with eight groups in the vector lanes, 2.25x fewer multiplies.

A 2x2 tile of outputs comes from a 4x4 tile d of inputs (per channel) as

    Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A        (* elementwise over the 4x4)

with g_c the 3x3 weights of one filter and channel (Lavin and Gray, 2015). G g G^T is computed
at load time (`pack_winograd_weights`); per tile, B^T d B costs 32 additions per channel and
A^T m A 24 per filter, and the 16 positions of the 4x4 each become a small GEMM over the
channels: 16 * C' multiply-adds per filter for 4 outputs, against 36 * C' directly. Each of
those GEMMs runs on grouped.py's 3x4 register tile (3 tiles x 4 filters, k = channel).

The input comes as grouped.conv_lane_groups reads it when linked (one zero-padded image per
block of 8 groups, channels in lane order). Per job (block, image, band of output rows): the
band's tiles are transformed into V (16 positions x tiles x channels), multiplied into M per
4 filters, and transformed back, with bias and activation, into NHWC. Every output is summed
by one thread in a fixed order: results do not depend on the thread count.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import LEAK, LEAKY, LINEAR
from kern.cpu.grouped import LANES, TILE_F, activate_columns, fma_tile, store_tile_row
from kern.cpu.simd import add8, aligned_empty, load8, output_array, splat8, store8, sub8

BAND_ROWS = 4  # output rows per job (even): 4 ran faster than 2 or 8 on ResNeXt's layers
# G of F(2x2, 3x3): U = G g G^T, 4x4 from 3x3.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def winograd_fits(ksize: int, stride: int, padding: int, group_channels: int) -> bool:
    """3x3, stride 1, padding 1; and channels enough per group to pay for the transforms.
    Measured against grouped.py's direct kernel on ResNeXt's layers (2 threads): 32 per
    group 0.21 vs 0.34 ms, 16 per group 0.25 vs 0.33, but 8 per group 0.36 vs 0.34."""
    return ksize == 3 and stride == 1 and padding == 1 and group_channels >= 16


def pack_winograd_weights(weights: np.ndarray, groups: int) -> np.ndarray:
    """OIHW 3x3 weights -> (G/8, F'/4, 16, C', 4, 8): G g G^T per filter and channel, lane j
    holding group 8b + j, as the multiply step reads them (position, channel, 4 filters)."""
    filters, group_channels, _, _ = weights.shape
    blocks, per_group = groups // LANES, filters // groups
    u = np.einsum("ik,fckl,jl->fcij", _G, weights.astype(np.float64), _G).reshape(filters, group_channels, 16)
    # (block, lane, quad, filter, c, pos) -> (block, quad, pos, c, filter, lane)
    split = u.reshape(blocks, LANES, per_group // TILE_F, TILE_F, group_channels, 16)
    packed = split.transpose(0, 2, 5, 4, 3, 1).astype(np.float32)
    aligned = aligned_empty(packed.size).reshape(packed.shape)
    aligned[...] = packed
    return aligned


@njit(inline="always", cache=True)
def transform_input(x_flat, at, row_stride, depth8, v, out_at, channels, step):
    """v[out_at + (pos * channels + c) * 8] = (B^T d_c B)[pos] for the 4x4 input tile at
    x_flat[at:] (pixel stride depth8, row stride row_stride), every channel c."""
    for c in range(channels):
        p = at + c * LANES
        q = out_at + c * LANES
        for row in range(4):  # (d B) row by row, then B^T over rows below
            d0 = load8(x_flat, p + row * row_stride)
            d1 = load8(x_flat, p + row * row_stride + depth8)
            d2 = load8(x_flat, p + row * row_stride + 2 * depth8)
            d3 = load8(x_flat, p + row * row_stride + 3 * depth8)
            store8(v, q + (4 * row) * step, sub8(d0, d2))
            store8(v, q + (4 * row + 1) * step, add8(d1, d2))
            store8(v, q + (4 * row + 2) * step, sub8(d2, d1))
            store8(v, q + (4 * row + 3) * step, sub8(d1, d3))
        for col in range(4):
            e0, e1 = load8(v, q + col * step), load8(v, q + (4 + col) * step)
            e2, e3 = load8(v, q + (8 + col) * step), load8(v, q + (12 + col) * step)
            store8(v, q + col * step, sub8(e0, e2))
            store8(v, q + (4 + col) * step, add8(e1, e2))
            store8(v, q + (8 + col) * step, sub8(e2, e1))
            store8(v, q + (12 + col) * step, sub8(e1, e3))


@njit(inline="always", cache=True)
def store_quad(arr, at, f0, f1, f2, f3):
    """arr[at : at + 32] = four vectors, one after the other."""
    store8(arr, at, f0)
    store8(arr, at + 8, f1)
    store8(arr, at + 16, f2)
    store8(arr, at + 24, f3)


@njit(parallel=True, cache=True)
def conv_lane_winograd(x, u, bias, act, lanes_out, band_rows, out):
    """x (N * G/8, H + 2, W + 2, 8C') as linked; u from pack_winograd_weights; bias
    (G/8, F', 8) from grouped.pack_lane_weights; out (N, H, W, F), H and W even, its channels
    in grouped.lane_order(F, G/8) with `lanes_out`; band_rows even. Jobs are (block, image,
    band of band_rows output rows)."""
    _, x_h, x_w, depth8 = x.shape
    n_images, out_h, out_w, filters = out.shape
    blocks, quads, _, channels, _, _ = u.shape
    per_group = quads * TILE_F
    x_flat, u_flat, bias_flat = x.reshape(-1), u.reshape(-1), bias.reshape(-1)
    out_rows = out.reshape(-1, filters)
    slope = splat8(LEAK if act == LEAKY else 1.0)
    zero = splat8(0.0)
    in_place = act != LINEAR and act != LEAKY  # relu, logistic, tanh
    bands = (out_h + band_rows - 1) // band_rows
    row_stride = x_w * depth8
    for job in prange(blocks * n_images * bands):
        b = job // (n_images * bands)
        n = job // bands % n_images
        first_out = job % bands * band_rows
        rows = min(band_rows, out_h - first_out)
        tiles_x = out_w // 2
        tiles = rows // 2 * tiles_x
        # V's 16 positions one line off a multiple of 4 KB apart: 16 streams of stores that
        # far apart fall in the same L1 sets (the input transform ran 2-4x slower).
        pos_step = tiles * channels * LANES + 16
        v = aligned_empty(16 * pos_step)
        m = aligned_empty(tiles * 16 * TILE_F * LANES)
        y = np.empty((4, TILE_F, LANES), dtype=np.float32)  # one tile's 4 pixels x 4 filters
        image = ((n * blocks + b) * x_h + first_out) * row_stride
        for t in range(tiles):
            ty, tx = t // tiles_x, t % tiles_x
            at = image + 2 * ty * row_stride + 2 * tx * depth8
            transform_input(x_flat, at, row_stride, depth8, v, t * channels * LANES, channels, pos_step)
        for quad in range(quads):
            # Multiply: per position, a GEMM of (tiles x channels) by (channels x 4 filters), on
            # grouped.py's 3x4 register tile.
            for pos in range(16):
                w0 = ((b * quads + quad) * 16 + pos) * channels * TILE_F * LANES
                for t in range(0, tiles, 3):
                    t1, t2 = min(t + 1, tiles - 1), min(t + 2, tiles - 1)
                    s0 = pos * pos_step + t * channels * LANES
                    s1 = pos * pos_step + t1 * channels * LANES
                    s2 = pos * pos_step + t2 * channels * LANES
                    acc = (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)
                    w = w0
                    for c in range(channels):
                        x0, x1 = load8(v, s0 + c * LANES), load8(v, s1 + c * LANES)
                        acc = fma_tile(x0, x1, load8(v, s2 + c * LANES), u_flat, w, acc)
                        w += TILE_F * LANES
                    a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23 = acc
                    store_quad(m, (t * 16 + pos) * TILE_F * LANES, a00, a01, a02, a03)
                    if t + 1 < tiles:
                        store_quad(m, (t1 * 16 + pos) * TILE_F * LANES, a10, a11, a12, a13)
                    if t + 2 < tiles:
                        store_quad(m, (t2 * 16 + pos) * TILE_F * LANES, a20, a21, a22, a23)
            # Back: Y = A^T M A + bias per filter, then the 4 pixels' 4 filters stored.
            o = b * LANES * per_group + quad * TILE_F * (LANES if lanes_out else 1)
            bias_at = (b * per_group + quad * TILE_F) * LANES
            for t in range(tiles):
                ty, tx = t // tiles_x, t % tiles_x
                base = t * 16 * TILE_F * LANES
                for f in range(TILE_F):
                    mm = base + f * LANES
                    step = TILE_F * LANES  # from position to position
                    m00, m01 = load8(m, mm), load8(m, mm + step)
                    m02, m03 = load8(m, mm + 2 * step), load8(m, mm + 3 * step)
                    m10, m11 = load8(m, mm + 4 * step), load8(m, mm + 5 * step)
                    m12, m13 = load8(m, mm + 6 * step), load8(m, mm + 7 * step)
                    m20, m21 = load8(m, mm + 8 * step), load8(m, mm + 9 * step)
                    m22, m23 = load8(m, mm + 10 * step), load8(m, mm + 11 * step)
                    m30, m31 = load8(m, mm + 12 * step), load8(m, mm + 13 * step)
                    m32, m33 = load8(m, mm + 14 * step), load8(m, mm + 15 * step)
                    s0 = add8(add8(m00, m10), m20)
                    s1 = add8(add8(m01, m11), m21)
                    s2 = add8(add8(m02, m12), m22)
                    s3 = add8(add8(m03, m13), m23)
                    d0 = sub8(sub8(m10, m20), m30)
                    d1 = sub8(sub8(m11, m21), m31)
                    d2 = sub8(sub8(m12, m22), m32)
                    d3 = sub8(sub8(m13, m23), m33)
                    bv = load8(bias_flat, bias_at + f * LANES)
                    store8(y[0, f], 0, add8(add8(add8(s0, s1), s2), bv))
                    store8(y[1, f], 0, add8(sub8(sub8(s1, s2), s3), bv))
                    store8(y[2, f], 0, add8(add8(add8(d0, d1), d2), bv))
                    store8(y[3, f], 0, add8(sub8(sub8(d1, d2), d3), bv))
                for px in range(4):
                    oy = first_out + 2 * ty + px // 2
                    ox = 2 * tx + px % 2
                    f0, f1 = load8(y[px, 0], 0), load8(y[px, 1], 0)
                    f2, f3 = load8(y[px, 2], 0), load8(y[px, 3], 0)
                    pixel = (n * out_h + oy) * out_w + ox
                    store_tile_row((out_rows, o, per_group), pixel, f0, f1, f2, f3, slope, lanes_out)
        if in_place:
            block_width = LANES * per_group
            for r in range(rows):
                first = (n * out_h + first_out + r) * out_w
                activate_columns(out_rows, first, out_w, b * block_width, block_width, act)


def conv2d_lane_winograd(
    x: np.ndarray, u: np.ndarray, bias: np.ndarray, filters: int, act: int, lanes_out: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """x as linked (N * G/8, H + 2, W + 2, 8C'), H and W even -> (N, H, W, filters), in
    grouped.lane_order with `lanes_out`; written into `out` where given (C-contiguous)."""
    blocks = u.shape[0]
    planes, padded_h, padded_w, _ = x.shape
    out = output_array((planes // blocks, padded_h - 2, padded_w - 2, filters), out)
    conv_lane_winograd(x, u, bias, act, lanes_out, BAND_ROWS, out)
    return out
