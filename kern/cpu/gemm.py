"""The one compute kernel behind convolution and the connected layer: C = A B^T, by hand.

out[g*rows + m, p] = activation(sum_k a[g, m, k] * b[g, p, k] + bias[g*rows + m])

Both operands keep the reduction index k contiguous (weights as [out][in*k*k], Darknet's file
order; inputs as rows of patches, see conv.im2row). Each inner loop computes a 4 x 3 tile of
dot products at once: 12 scalar accumulators, k innermost. With fastmath=True LLVM
reassociates the sums and vectorizes over k with AVX2 FMA (NUMBA-NOTES.md: ~82 GFLOP/s per
core here, versus ~4 for a tile kept in a local array). Per 8 values of k it loads 7 vectors
and does 12 FMAs, so it is bound by arithmetic, not by loads.

The operands are padded to whole tiles (rows of a to a multiple of 4, of b to a multiple of 3),
so there is no edge code; the store skips the padded rows. Work is split over output tiles,
never over k: each output is summed by one thread in a fixed order, so results are identical
for every thread count.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar

TILE_M, TILE_P = 4, 3  # the register tile: rows of a x rows of b
BLOCK_M, BLOCK_P = 64, 24  # a block of tiles one thread computes (weights reused from L2)


def padded(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


@njit(inline="always", cache=True)
def _store(out, row, col, value, bias, act, rows, cols, group):
    if row < rows and col < cols:
        out[group * rows + row, col] = activate_scalar(value + bias[group * rows + row], act)


@njit(parallel=True, fastmath=True, cache=True)
def gemm_nt_bias_act(a, b, bias, act, out, rows, cols):
    """a: (G, Mp, K), b: (G, Pp, K), bias: (G*rows,), out: (G*rows, cols); see module doc."""
    groups, mp, depth = a.shape
    pp = b.shape[1]
    m_blocks = (mp + BLOCK_M - 1) // BLOCK_M
    p_blocks = (pp + BLOCK_P - 1) // BLOCK_P
    for tile in prange(groups * m_blocks * p_blocks):
        g = tile // (m_blocks * p_blocks)
        m_block = (tile // p_blocks) % m_blocks
        p_block = tile % p_blocks
        for p in range(p_block * BLOCK_P, min(pp, p_block * BLOCK_P + BLOCK_P), TILE_P):
            b0, b1, b2 = b[g, p], b[g, p + 1], b[g, p + 2]
            for m in range(m_block * BLOCK_M, min(mp, m_block * BLOCK_M + BLOCK_M), TILE_M):
                a0, a1, a2, a3 = a[g, m], a[g, m + 1], a[g, m + 2], a[g, m + 3]
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
                _store(out, m, p, c00, bias, act, rows, cols, g)
                _store(out, m, p + 1, c01, bias, act, rows, cols, g)
                _store(out, m, p + 2, c02, bias, act, rows, cols, g)
                _store(out, m + 1, p, c10, bias, act, rows, cols, g)
                _store(out, m + 1, p + 1, c11, bias, act, rows, cols, g)
                _store(out, m + 1, p + 2, c12, bias, act, rows, cols, g)
                _store(out, m + 2, p, c20, bias, act, rows, cols, g)
                _store(out, m + 2, p + 1, c21, bias, act, rows, cols, g)
                _store(out, m + 2, p + 2, c22, bias, act, rows, cols, g)
                _store(out, m + 3, p, c30, bias, act, rows, cols, g)
                _store(out, m + 3, p + 1, c31, bias, act, rows, cols, g)
                _store(out, m + 3, p + 2, c32, bias, act, rows, cols, g)
