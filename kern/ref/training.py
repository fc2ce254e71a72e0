"""The training ops on plain NumPy (NCHW), in float64 for ground truth: the reference every
fast training backend is tested against, and a readable statement of what each op computes.

Gradients keep the loss's own sign (dL/dx). Where an op is given `into`, a gradient already
holding other contributions (a layer read by a route or a shortcut too), it ADDS its own and
returns `into`; else it returns a new array. Parameters are this backend's arrays too
(`parameter`): float64 here when dtype is float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kern.ref import batchnorm, elementwise, pool
from kern.ref.conv import conv2d_backward_input, conv2d_backward_weights, conv2d_im2col


def _add(into: np.ndarray | None, value: np.ndarray) -> np.ndarray:
    if into is None:
        return value
    into += value
    return into


class RefTraining:
    name = "ref"

    def __init__(self, dtype: type = np.float32, batchnorm_variant: str = "darknet") -> None:
        self.dtype = np.dtype(dtype)
        self.batchnorm_variant = batchnorm_variant  # "exact" only for the gradient checks

    # ---- arrays
    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=self.dtype)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.array(x)

    def parameter(self, value: np.ndarray) -> np.ndarray:
        return np.array(value, dtype=self.dtype)

    def host(self, param: np.ndarray) -> np.ndarray:
        """A parameter (or update buffer) as a host array, a copy."""
        return np.array(param)

    def add(self, into: np.ndarray | None, value: np.ndarray) -> np.ndarray:
        """into + value, in place (or value itself, where into is None)."""
        return _add(into, value)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """A parameter-shaped array of zeros (momentum buffers)."""
        return np.zeros(shape, dtype=self.dtype)

    def new_pass(self) -> None:
        """Every op returns a new array: nothing to take back."""

    def give_back(self, array: np.ndarray) -> None:
        """NumPy frees what nothing refers to."""

    # ---- convolution
    def conv_weights(self, weights: np.ndarray, groups: int, previous: np.ndarray | None = None) -> np.ndarray:
        """The weights as conv2d and conv2d_backward_input take them after an update."""
        return weights

    def conv2d(self, x, weights, *, stride: int, padding: int, groups: int, bias=None, activation="linear"):
        """The convolution's output z, or activation(z + bias) where a bias is given (a
        layer without batchnorm)."""
        z = conv2d_im2col(x, weights, stride, padding, groups)
        return z if bias is None else self.bias_activate(z, bias, activation)

    def conv2d_backward_input(self, dz, weights, *, in_shape, stride, padding, groups, into=None):
        return _add(into, conv2d_backward_input(dz, weights, tuple(in_shape), stride, padding, groups))

    def conv2d_backward_weights(self, x, dz, *, ksize, stride, padding, groups, into):
        """dL/dW summed over the batch, ADDED into `into` (the update buffer, OIHW)."""
        into += conv2d_backward_weights(x, dz, ksize, stride, padding, groups)

    def bias_activate(self, z, bias, activation: str) -> np.ndarray:
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return elementwise.activate(z + bias.reshape(shape), activation)

    def activation_backward(self, dy, y, activation: str, *, biases_into) -> np.ndarray:
        """dL/dz = dy * activation'(y); its sum per channel (the bias gradient) is added to
        biases_into."""
        dz = dy * elementwise.activation_gradient(y, activation)
        biases_into += dz.sum(axis=(0, 2, 3))
        return dz

    def batchnorm_forward(self, z, scales, biases, rolling_mean, rolling_variance, activation):
        return batchnorm.batchnorm_forward(
            z, scales, biases, rolling_mean, rolling_variance, activation, self.batchnorm_variant
        )

    def batchnorm_backward(
        self, dy, y, z, mean, variance, scales, biases, activation, *, scales_into, biases_into
    ):
        dz, dscales, dbiases = batchnorm.batchnorm_backward(
            dy, y, z, mean, variance, scales, activation, self.batchnorm_variant
        )
        scales_into += dscales
        biases_into += dbiases
        return dz

    # ---- connected: x flattened in C, H, W order
    def connected(self, x, weights) -> np.ndarray:
        return (x.reshape(x.shape[0], -1) @ weights.T).reshape(x.shape[0], -1, 1, 1)

    def connected_backward_input(self, dz, weights, *, in_shape, into=None):
        dx = (dz.reshape(dz.shape[0], -1) @ weights).reshape(dz.shape[0], *in_shape)
        return _add(into, dx)

    def connected_backward_weights(self, x, dz, *, into) -> None:
        into += dz.reshape(dz.shape[0], -1).T @ x.reshape(x.shape[0], -1)

    # ---- pooling
    def maxpool_forward(self, x, *, size, stride, padding):
        return pool.maxpool_argmax(x, size, stride, padding)

    def maxpool_backward(self, dy, where, *, in_shape, into=None):
        return _add(into, pool.maxpool_backward(dy, where, tuple(in_shape)))

    def avgpool(self, x):
        return pool.avgpool(x)

    def avgpool_backward(self, dy, *, in_shape, into=None):
        return _add(into, pool.avgpool_backward(dy, tuple(in_shape)))

    # ---- the head
    def softmax_cross_entropy(self, x, labels, *, groups, temperature, cost_scale):
        return elementwise.softmax_cross_entropy(x, np.asarray(labels), groups, temperature, cost_scale)

    # ---- data movement
    def shortcut(self, x, source, *, alpha, beta, activation):
        return elementwise.shortcut(x, source, alpha, beta, activation)

    def shortcut_backward(self, dy, y, *, source_shape, alpha, beta, activation):
        """(dL/dx, dL/dsource), new arrays."""
        return elementwise.shortcut_backward(dy, y, tuple(source_shape), alpha, beta, activation)

    def route(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        return elementwise.route(xs)

    def route_backward(self, dy, channels: Sequence[int]) -> list[np.ndarray]:
        """dy split along channels: the inputs' gradients, new arrays."""
        bounds = np.cumsum([0, *channels])
        return [dy[:, a:b].copy() for a, b in zip(bounds, bounds[1:])]

    def dropout_mask(self, keep: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        """A pass's mask: keep (a host bool mask of x's NCHW shape) and the scale of kept values."""
        return keep, scale

    def dropout(self, x, mask: tuple[np.ndarray, float]) -> np.ndarray:
        """x * scale where keep, 0 elsewhere."""
        keep, scale = mask
        return np.where(keep, x * x.dtype.type(scale), x.dtype.type(0))

    def dropout_backward(self, dy, mask: tuple[np.ndarray, float], into=None):
        return _add(into, self.dropout(dy, mask))

    def crop(self, x, *, height, width, top, left, flip, scale, shift):
        return elementwise.crop_train(x, height, width, top, left, flip, scale, shift)

    # ---- the update (Darknet's update_convolutional_layer), in place
    def sgd_update(self, param, update, *, rate: float, momentum: float, decay: float) -> None:
        """update += decay * param (decay is Darknet's decay*batch, 0 for biases and scales);
        param -= rate * update (rate is learning_rate/batch); update *= momentum."""
        one = param.dtype.type
        if decay:
            update += one(decay) * param
        param -= one(rate) * update
        update *= one(momentum)
