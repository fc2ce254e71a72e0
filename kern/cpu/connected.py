"""The connected layer: the convolution's kernel as a 1x1 convolution, one "pixel" per image.

out[n, o] = activation(sum_k W[o, k] * x[n, k] + b[o]); x is flattened in Darknet's C, H, W
order. At batch 1 this is a matrix-vector product, bound by reading W once.
"""

import numpy as np

from kern.cpu.gemm import conv_gemm, pack_panels


def pack_connected(weights: np.ndarray) -> np.ndarray:
    """[outputs][inputs] -> gemm.pack_panels of one group."""
    return pack_panels(weights[np.newaxis])


def connected(x: np.ndarray, packed: np.ndarray, bias: np.ndarray, outputs: int, act: int):
    """x (N, H, W, C) -> (N, 1, 1, outputs)."""
    n_images = x.shape[0]
    # The images as one row of N "pixels", each with all its inputs as channels (C, H, W order).
    image = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(1, 1, n_images, -1)
    out = np.empty((1, 1, n_images, outputs), dtype=np.float32)
    conv_gemm(image, packed, bias, act, 1, 1, out, 1, 0, out, -1)
    return out.reshape(n_images, 1, 1, outputs)
