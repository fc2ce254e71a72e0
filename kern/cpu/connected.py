"""The connected (fully connected) layer: the conv's GEMM kernel with pixels = images.

out[o, n] = activation(sum_k W[o, k] * x[n, k] + b[o]), then transposed to (N, O). At batch 1
this is a matrix-vector product: bound by reading W once, not by arithmetic.
"""

import numpy as np

from kern.cpu.gemm import TILE_M, TILE_P, gemm_nt_bias_act, padded


def pack_connected(weights: np.ndarray) -> np.ndarray:
    """[outputs][inputs] -> (1, outputs padded to a multiple of 4, inputs)."""
    outputs, inputs = weights.shape
    packed = np.zeros((1, padded(outputs, TILE_M), inputs), dtype=np.float32)
    packed[0, :outputs] = weights
    return packed


def connected(x: np.ndarray, packed: np.ndarray, bias: np.ndarray, outputs: int, act: int):
    """x (N, C, H, W) -> (N, outputs, 1, 1)."""
    n_images = x.shape[0]
    inputs = packed.shape[2]
    rows = np.zeros((1, padded(n_images, TILE_P), inputs), dtype=np.float32)
    rows[0, :n_images] = x.reshape(n_images, inputs)
    out = np.empty((outputs, n_images), dtype=np.float32)
    gemm_nt_bias_act(packed, rows, bias, act, out, outputs, n_images)
    return np.ascontiguousarray(out.T).reshape(n_images, outputs, 1, 1)
