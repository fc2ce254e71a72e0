"""Per-channel ops that Caffe's networks need (and Darknet's [batchnorm] and [activation]
sections): a channel affine (standalone batchnorm / scale), scaling by another tensor's
per-channel values (squeeze-and-excitation), cross-channel LRN and channel slices. NCHW."""

from __future__ import annotations

import numpy as np

from kern.ref.elementwise import activate


def _per_channel(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(1, -1, 1, 1)


def affine(
    x: np.ndarray, scale: np.ndarray, bias: np.ndarray, activation: str, slope: np.ndarray | None = None
) -> np.ndarray:
    """activation(v) with v = x * scale[c] + bias[c], or v * slope[c] where v < 0 (PReLU)."""
    v = x * _per_channel(scale, x.dtype) + _per_channel(bias, x.dtype)
    if slope is not None:
        v = np.where(v > 0, v, v * _per_channel(slope, x.dtype))
    return activate(v, activation)


def combine(x: np.ndarray, other: np.ndarray, operation: str) -> np.ndarray:
    """Caffe's Eltwise PROD ("prod") or MAX ("max") of two blobs of one shape."""
    if operation == "prod":
        return x * other
    if operation == "max":
        return np.maximum(x, other)
    raise ValueError(f"unknown operation {operation!r}")


def scale_channels(x: np.ndarray, factors: np.ndarray, add: np.ndarray | None = None) -> np.ndarray:
    """x * factors[n, c] (factors (N, C, 1, 1): one value per image and channel), + add where
    given (Caffe's Scale with two inputs, and Axpy: factors * x + add)."""
    y = x * factors.reshape(x.shape[0], x.shape[1], 1, 1)
    return y if add is None else y + add


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """Caffe's LRN across channels: x / (k + alpha/size * sum of x^2 over channels c - (size-1)/2
    .. c + size/2 (those that exist))^beta."""
    before = (size - 1) // 2
    squares = np.pad(x * x, ((0, 0), (before, size - 1 - before), (0, 0), (0, 0)))
    window = sum(squares[:, i : i + x.shape[1]] for i in range(size))
    t = x.dtype.type
    return x * (t(k) + t(alpha / size) * window) ** t(-beta)


def slice_channels(x: np.ndarray, first: int, count: int) -> np.ndarray:
    """Channels first .. first+count-1 (a copy)."""
    return x[:, first : first + count].copy()
