"""Plain data shared by every backend: activations and batchnorm parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Darknet's CPU path divides by (sqrt(variance) + 1e-6): epsilon AFTER the square root.
DARKNET_BN_EPSILON = 1e-6
# Darknet's batchnorm backward divides by sqrt(variance + 1e-5) (kern/ref/batchnorm.py).
BN_BACKWARD_EPSILON = 1e-5
# Its rolling statistics in training: rolling = 0.99 * rolling + 0.01 * this batch's.
ROLLING_RATE = 0.01

# The activations the classification cfgs use, and tanh (Darknet's and Caffe's TanH). Numba
# and CUDA kernels take the index as an int code.
ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "tanh")


def activation_code(name: str) -> int:
    """The integer code the Numba and CUDA kernels use for an activation name."""
    return ACTIVATIONS.index(name)


@dataclass(frozen=True)
class BatchNorm:
    """Inference batchnorm: y = scales * (x - mean) / (sqrt(variance) + 1e-6) + bias."""

    scales: np.ndarray
    mean: np.ndarray
    variance: np.ndarray


def fold_batchnorm(
    weights: np.ndarray, bias: np.ndarray, bn: BatchNorm | None
) -> tuple[np.ndarray, np.ndarray]:
    """Fold batchnorm into the weights and bias of the layer before it (in float64).

    weights has the output channel first (conv OIHW or connected [out][in]); the result is
    float32 weights and bias such that conv(x, w') + b' == batchnorm(conv(x, w) + 0) + bias.
    """
    if bn is None:
        return weights.astype(np.float32), bias.astype(np.float32)
    factor = bn.scales.astype(np.float64) / (
        np.sqrt(bn.variance.astype(np.float64)) + DARKNET_BN_EPSILON
    )
    shape = (-1,) + (1,) * (weights.ndim - 1)
    folded_w = weights.astype(np.float64) * factor.reshape(shape)
    folded_b = bias.astype(np.float64) - bn.mean.astype(np.float64) * factor
    return folded_w.astype(np.float32), folded_b.astype(np.float32)


def conv_output_size(size_in: int, kernel: int, stride: int, padding: int) -> int:
    """Darknet's convolution output size: (in + 2*padding - size) / stride + 1."""
    return (size_in + 2 * padding - kernel) // stride + 1


def maxpool_output_size(size_in: int, kernel: int, stride: int, padding: int) -> int:
    """Darknet's maxpool output size; padding is the TOTAL padding, not per side."""
    return (size_in + padding - kernel) // stride + 1


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a kernel size or padding given as one number or two (Caffe's
    non-square kernels: prepare_conv's padding may be a pair, the weights' KH and KW differ)."""
    return (int(value), int(value)) if np.ndim(value) == 0 else (int(value[0]), int(value[1]))
