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


def pool_window(
    x: np.ndarray, method: str, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
    out_size: tuple[int, int],
) -> np.ndarray:
    """Caffe's pooling over windows starting at (i*stride - pad): "max" over the cells inside
    the input; "ave" the sum over them divided by the window clipped to [-pad, in + pad) (padded
    cells inside that range count as zeros; a window cut by in + pad divides by fewer)."""
    n_images, channels, height, width = x.shape
    out = np.empty((n_images, channels, *out_size), dtype=x.dtype)
    for i in range(out_size[0]):
        top = i * stride[0] - pad[0]
        bottom = min(top + kernel[0], height + pad[0])
        for j in range(out_size[1]):
            left = j * stride[1] - pad[1]
            right = min(left + kernel[1], width + pad[1])
            window = x[:, :, max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
            if method == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / ((bottom - top) * (right - left))
    return out
