"""The one compute kernel behind convolution and the connected layer: C = A B^T, by hand.

out[p, g*rows + m] = activation(sum_k a[g, m, k] * b[p, g*depth + k] + bias[g*rows + m])
and, when `residual` is given (a shortcut fused into the convolution before it):
out[p, o] = residual_activation(out[p, o] + residual[p, o])

a holds the weights, packed at load time as (groups, rows padded to 4, depth), with depth
padded to a multiple of 8 (zeros). b holds one row of `depth` inputs per output pixel: the
image itself for a 1x1 convolution in channels-last layout, else rows built by im2row. Both
keep the reduction index k contiguous, so each inner loop is a dot product.

Each tile computes 4 x 3 dot products at once: 12 scalar accumulators, k innermost. With
fastmath=True LLVM reassociates the sums and vectorizes over k with AVX2 FMA (NUMBA-NOTES.md:
~82 GFLOP/s per core here, versus ~4 for a tile kept in a local array). Per 8 values of k it
loads 7 vectors and does 12 FMAs: bound by arithmetic, not by loads.

Rows of b past the last pixel are never read: the tile re-reads the last row and skips the
store (no padding copy). Work is split over output blocks, never over k: each output is summed
by one thread in a fixed order, so results are identical for every thread count.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar

TILE_M, TILE_P = 4, 3  # the register tile: weight rows x pixel rows
BLOCK_M, BLOCK_P = 64, 24  # the tiles one thread computes in a row (weights reused from L2)
DEPTH_MULTIPLE = 8  # one AVX2 vector of float32: no scalar tail in the k loop


def padded(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


@njit(inline="always", cache=True)
def _store(out, p, m, value, bias, act, rows, pixels, g, residual, residual_act):
    if m < rows and p < pixels:
        o = g * rows + m
        v = activate_scalar(value + bias[o], act)
        if residual_act >= 0:  # a fused shortcut
            v = activate_scalar(v + residual[p, o], residual_act)
        out[p, o] = v


@njit(inline="always", fastmath=True, cache=True)
def dot_4x3(a0, a1, a2, a3, b0, b1, b2, depth):
    """12 dot products at once: rows a0..a3 with rows b0..b2 over k < depth, in registers."""
    c00 = c01 = c02 = c10 = c11 = c12 = np.float32(0.0)
    c20 = c21 = c22 = c30 = c31 = c32 = np.float32(0.0)
    for k in range(depth):
        x0, x1, x2 = b0[k], b1[k], b2[k]
        w = a0[k]
        c00 += w * x0
        c01 += w * x1
        c02 += w * x2
        w = a1[k]
        c10 += w * x0
        c11 += w * x1
        c12 += w * x2
        w = a2[k]
        c20 += w * x0
        c21 += w * x1
        c22 += w * x2
        w = a3[k]
        c30 += w * x0
        c31 += w * x1
        c32 += w * x2
    return c00, c01, c02, c10, c11, c12, c20, c21, c22, c30, c31, c32


@njit(inline="always", cache=True)
def store_4x3(out, p, m, c, bias, act, rows, pixels, g, residual, residual_act):
    """Store a 4 x 3 tile (pixels p..p+2, filters m..m+3 of group g): bias, activation, and
    the residual with its activation when residual_act >= 0."""
    for i in range(4):
        for j in range(3):
            _store(out, p + j, m + i, c[3 * i + j], bias, act, rows, pixels, g, residual, residual_act)


@njit(parallel=True, fastmath=True, cache=True)
def gemm_nt_bias_act(a, b, bias, act, out, rows, pixels, residual, residual_act):
    """a (G, Mp, depth), b (>= pixels, G*depth or more), bias (G*rows,), out (pixels, G*rows);
    residual like out, read only when residual_act >= 0 (pass out itself and -1 for none)."""
    groups, mp, depth = a.shape
    m_blocks = (mp + BLOCK_M - 1) // BLOCK_M
    p_blocks = (pixels + BLOCK_P - 1) // BLOCK_P
    last = pixels - 1
    for block in prange(groups * m_blocks * p_blocks):
        g = block // (m_blocks * p_blocks)
        m_block = (block // p_blocks) % m_blocks
        p_block = block % p_blocks
        k0 = g * depth
        for p in range(p_block * BLOCK_P, min(pixels, p_block * BLOCK_P + BLOCK_P), TILE_P):
            b0 = b[p, k0 : k0 + depth]
            b1 = b[min(p + 1, last), k0 : k0 + depth]
            b2 = b[min(p + 2, last), k0 : k0 + depth]
            for m in range(m_block * BLOCK_M, min(mp, m_block * BLOCK_M + BLOCK_M), TILE_M):
                c = dot_4x3(a[g, m], a[g, m + 1], a[g, m + 2], a[g, m + 3], b0, b1, b2, depth)
                store_4x3(out, p, m, c, bias, act, rows, pixels, g, residual, residual_act)
