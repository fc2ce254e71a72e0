"""Batchnorm in training, Darknet's way (its CPU path), as plain NumPy: the reference.

Forward, per channel over the M = N*H*W values of a batch:
    mean = sum(z) / M,   variance = sum((z - mean)^2) / (M - 1)          (unbiased)
    y = activation(scales * (z - mean) / (sqrt(variance) + 1e-6) + biases)
    rolling_mean = 0.99 * rolling_mean + 0.01 * mean  (rolling_variance likewise)
Backward (Darknet's backward_batchnorm_layer), with d = dL/dy * activation'(y) and
s = sqrt(variance + 1e-5):
    dbiases = sum(d),  dscales = sum(d * x_norm)  (x_norm as the forward computed it)
    dz = d*scales/s - (sum(d*scales*(z - mean)) / s^3) * (z - mean)/M - sum(d*scales)/(s*M)
That is the exact gradient of a slightly different forward, with the biased variance (/M) and
(z - mean)/sqrt(variance + 1e-5): Darknet's forward and backward disagree by O(1/M) and by
where the epsilon goes. kern computes what Darknet computes. `variant="exact"` runs that other
forward (and the same backward on its variance), which the tests check against finite
differences to prove the backward's formula; training always uses "darknet".
"""

from __future__ import annotations

import numpy as np

from kern.params import BN_BACKWARD_EPSILON, DARKNET_BN_EPSILON, ROLLING_RATE
from kern.ref.elementwise import activate, activation_gradient

VARIANTS = ("darknet", "exact")


def _channel_shape(z: np.ndarray) -> tuple[int, ...]:
    return (1, -1) + (1,) * (z.ndim - 2)


def _values_per_channel(z: np.ndarray) -> int:
    return z.size // z.shape[1]


def normalized(z: np.ndarray, mean: np.ndarray, variance: np.ndarray, variant: str) -> np.ndarray:
    """x_norm: (z - mean) / (sqrt(variance) + 1e-6), or / sqrt(variance + 1e-5) for "exact"."""
    shape, one = _channel_shape(z), z.dtype.type
    if variant == "darknet":
        std = np.sqrt(variance) + one(DARKNET_BN_EPSILON)
    else:
        std = np.sqrt(variance + one(BN_BACKWARD_EPSILON))
    return (z - mean.reshape(shape)) / std.reshape(shape)


def batchnorm_forward(
    z: np.ndarray, scales: np.ndarray, biases: np.ndarray, rolling_mean: np.ndarray,
    rolling_variance: np.ndarray, activation: str, variant: str = "darknet",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, mean, variance) of a training batch; rolling_mean and rolling_variance are updated
    in place."""
    count = _values_per_channel(z)
    axes = (0,) + tuple(range(2, z.ndim))
    mean = z.sum(axis=axes) / z.dtype.type(count)
    squares = ((z - mean.reshape(_channel_shape(z))) ** 2).sum(axis=axes)
    variance = squares / z.dtype.type(count - 1 if variant == "darknet" else count)
    keep, rate = z.dtype.type(1 - ROLLING_RATE), z.dtype.type(ROLLING_RATE)
    rolling_mean[...] = keep * rolling_mean + rate * mean
    rolling_variance[...] = keep * rolling_variance + rate * variance
    shape = _channel_shape(z)
    y = scales.reshape(shape) * normalized(z, mean, variance, variant) + biases.reshape(shape)
    return activate(y, activation), mean, variance


def batchnorm_backward(
    dy: np.ndarray, y: np.ndarray, z: np.ndarray, mean: np.ndarray, variance: np.ndarray,
    scales: np.ndarray, activation: str, variant: str = "darknet",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dL/dz, dL/dscales, dL/dbiases) from dL/dy, the forward's output y, input z and its
    batch mean and variance."""
    shape, one = _channel_shape(z), z.dtype.type
    count = _values_per_channel(z)
    axes = (0,) + tuple(range(2, z.ndim))
    d = dy * activation_gradient(y, activation)
    dbiases = d.sum(axis=axes)
    dscales = (d * normalized(z, mean, variance, variant)).sum(axis=axes)
    dxhat = d * scales.reshape(shape)
    std = np.sqrt(variance + one(BN_BACKWARD_EPSILON))
    centred = z - mean.reshape(shape)
    mean_delta = -dxhat.sum(axis=axes) / std
    variance_delta = one(-0.5) * (dxhat * centred).sum(axis=axes) * std ** one(-3)
    dz = (
        dxhat / std.reshape(shape)
        + variance_delta.reshape(shape) * one(2) * centred / one(count)
        + mean_delta.reshape(shape) / one(count)
    )
    return dz, dscales, dbiases
