"""The connected layer: the convolution's GEMM kernel with one "pixel" per image.

out[n, o] = activation(sum_k W[o, k] * x[n, k] + b[o]); x is flattened in Darknet's C, H, W
order. At batch 1 this is a matrix-vector product, bound by reading W once.
"""

import numpy as np

from kern.cpu.gemm import DEPTH_MULTIPLE, TILE_M, gemm_nt_bias_act, padded


def pack_connected(weights: np.ndarray) -> np.ndarray:
    """[outputs][inputs] -> (1, outputs padded to 4, inputs padded to 8), zeros added."""
    outputs, inputs = weights.shape
    packed = np.zeros((1, padded(outputs, TILE_M), padded(inputs, DEPTH_MULTIPLE)), dtype=np.float32)
    packed[0, :outputs, :inputs] = weights
    return packed


def connected(x: np.ndarray, packed: np.ndarray, bias: np.ndarray, outputs: int, act: int):
    """x (N, H, W, C) -> (N, 1, 1, outputs)."""
    n_images = x.shape[0]
    depth = packed.shape[2]
    rows = np.zeros((n_images, depth), dtype=np.float32)
    rows[:, : x[0].size] = x.transpose(0, 3, 1, 2).reshape(n_images, -1)  # Darknet's C, H, W order
    out = np.empty((n_images, 1, 1, outputs), dtype=np.float32)
    flat = out.reshape(n_images, outputs)
    gemm_nt_bias_act(packed, rows, bias, act, flat, outputs, n_images, flat, -1)
    return out
