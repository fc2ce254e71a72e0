"""The NumPy reference backend: the truth every other backend is tested against.

It applies batchnorm explicitly (never folded) and runs in float32 or, for ground truth,
float64 (`RefBackend(dtype=np.float64)`): weights and inputs are cast to that dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kern.params import BatchNorm
from kern.ref import channels, elementwise, pool
from kern.ref.conv import conv2d_im2col, conv2d_loops, im2col

__all__ = ["RefBackend", "conv2d_im2col", "conv2d_loops", "im2col"]


@dataclass(frozen=True)
class RefConv:
    weights: np.ndarray
    bias: np.ndarray
    bn: BatchNorm | None
    stride: int
    padding: int
    groups: int
    activation: str


@dataclass(frozen=True)
class RefConnected:
    weights: np.ndarray
    bias: np.ndarray
    bn: BatchNorm | None
    activation: str


@dataclass(frozen=True)
class RefAffine:
    scale: np.ndarray
    bias: np.ndarray
    activation: str
    slope: np.ndarray | None = None  # PReLU's, per channel


class RefBackend:
    name = "ref"

    def __init__(self, dtype: type = np.float32) -> None:
        self.dtype = np.dtype(dtype)

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=self.dtype)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def prepare_conv(self, weights, bias, bn, *, stride, padding, groups, activation) -> RefConv:
        return RefConv(
            weights.astype(self.dtype), bias.astype(self.dtype), bn, stride, padding, groups, activation
        )

    def conv2d(self, x: np.ndarray, conv: RefConv) -> np.ndarray:
        y = conv2d_im2col(x, conv.weights, conv.stride, conv.padding, conv.groups)
        return self._bias_bn_activate(y, conv.bias, conv.bn, conv.activation)

    def conv2d_residual(self, x, conv: RefConv, residual, *, activation):
        return elementwise.activate(self.conv2d(x, conv) + residual, activation)

    def prepare_connected(self, weights, bias, bn, *, activation) -> RefConnected:
        return RefConnected(weights.astype(self.dtype), bias.astype(self.dtype), bn, activation)

    def connected(self, x: np.ndarray, fc: RefConnected) -> np.ndarray:
        y = x.reshape(x.shape[0], -1) @ fc.weights.T
        y = self._bias_bn_activate(y, fc.bias, fc.bn, fc.activation)
        return y.reshape(y.shape[0], -1, 1, 1)

    def maxpool(self, x, *, size, stride, padding):
        return pool.maxpool(x, size, stride, padding)

    def avgpool(self, x):
        return pool.avgpool(x)

    def softmax(self, x, *, groups, temperature):
        return elementwise.softmax(x, groups, temperature)

    def shortcut(self, x, source, *, alpha, beta, activation):
        return elementwise.shortcut(x, source, alpha, beta, activation)

    def route(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        return elementwise.route(xs)

    def crop(self, x, *, height, width, scale, shift):
        return elementwise.crop(x, height, width, scale, shift)

    def activate(self, x, activation):
        return elementwise.activate(x, activation)

    def prepare_affine(self, scale, bias, *, activation, slope=None) -> RefAffine:
        slope = None if slope is None else slope.astype(self.dtype)
        return RefAffine(scale.astype(self.dtype), bias.astype(self.dtype), activation, slope)

    def affine(self, x, a: RefAffine):
        return channels.affine(x, a.scale, a.bias, a.activation, a.slope)

    def combine(self, x, other, *, operation):
        return channels.combine(x, other, operation)

    def pool_window(self, x, *, method, kernel, stride, pad, out_size):
        return channels.pool_window(x, method, kernel, stride, pad, out_size)

    def scale_channels(self, x, factors, add=None):
        return channels.scale_channels(x, factors, add)

    def lrn(self, x, *, size, alpha, beta, k):
        return channels.lrn(x, size, alpha, beta, k)

    def slice_channels(self, x, *, first, count):
        return channels.slice_channels(x, first, count)

    @staticmethod
    def _bias_bn_activate(y, bias, bn, activation):
        """Darknet's order: batchnorm (if any), then + bias, then the activation."""
        if bn is not None:
            y = elementwise.batchnorm(y, bn)
        shape = (1, -1) + (1,) * (y.ndim - 2)
        return elementwise.activate(y + bias.reshape(shape), activation)
