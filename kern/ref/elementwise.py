"""Element-wise and data-movement ops: activations, batchnorm, softmax, shortcut, route, crop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kern.params import DARKNET_BN_EPSILON, BatchNorm


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "linear":
        return x
    if activation == "leaky":
        return np.where(x > 0, x, x * x.dtype.type(0.1))
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "logistic":
        return 1 / (1 + np.exp(-x))
    raise ValueError(f"unknown activation {activation!r}")


def batchnorm(x: np.ndarray, bn: BatchNorm) -> np.ndarray:
    """Darknet's CPU formula: scales * (x - mean) / (sqrt(variance) + 1e-6), per channel."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    dtype = x.dtype
    mean = bn.mean.astype(dtype).reshape(shape)
    std = (np.sqrt(bn.variance.astype(dtype)) + dtype.type(DARKNET_BN_EPSILON)).reshape(shape)
    return bn.scales.astype(dtype).reshape(shape) * (x - mean) / std


def softmax(x: np.ndarray, groups: int, temperature: float) -> np.ndarray:
    """Softmax of each image's flattened values, over `groups` equal contiguous slices."""
    flat = x.reshape(x.shape[0], groups, -1) / x.dtype.type(temperature)
    e = np.exp(flat - flat.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).reshape(x.shape)


def shortcut(
    x: np.ndarray, source: np.ndarray, alpha: float, beta: float, activation: str
) -> np.ndarray:
    """out = x; on the common part out = alpha*x + beta*source, then activation on all of out.

    When shapes differ, Darknet samples `source` with stride = W_src/W_out, or spreads it into
    every sample-th output with sample = W_out/W_src, over min(C), min(H), min(W) elements.
    """
    out = x.copy()
    _, c_out, h_out, w_out = x.shape
    _, c_src, h_src, w_src = source.shape
    stride = max(w_src // w_out, 1)
    sample = max(w_out // w_src, 1)
    c, h, w = min(c_out, c_src), min(h_out, h_src), min(w_out, w_src)
    added = source[:, :c, : h * stride : stride, : w * stride : stride]
    target = (slice(None), slice(0, c), slice(0, h * sample, sample), slice(0, w * sample, sample))
    out[target] = x.dtype.type(alpha) * out[target] + x.dtype.type(beta) * added
    return activate(out, activation)


def route(xs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs, axis=1)


def crop(x: np.ndarray, height: int, width: int, scale: float, shift: float) -> np.ndarray:
    """Darknet's crop layer at inference: the centred height x width window, then x*scale+shift."""
    top = (x.shape[2] - height) // 2
    left = (x.shape[3] - width) // 2
    window = x[:, :, top : top + height, left : left + width]
    return window * x.dtype.type(scale) + x.dtype.type(shift)
