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
    if activation == "tanh":
        return np.tanh(x)
    raise ValueError(f"unknown activation {activation!r}")


def activation_gradient(y: np.ndarray, activation: str) -> np.ndarray:
    """d activation / d x, from the OUTPUT y, as Darknet's gradient_array takes it: leaky 1 or
    0.1 (0.1 where y = 0), relu 1 or 0, logistic y (1 - y), tanh 1 - y^2, linear 1."""
    one = y.dtype.type(1)
    if activation == "linear":
        return np.ones_like(y)
    if activation == "leaky":
        return np.where(y > 0, one, y.dtype.type(0.1))
    if activation == "relu":
        return np.where(y > 0, one, y.dtype.type(0))
    if activation == "logistic":
        return (one - y) * y
    if activation == "tanh":
        return one - y * y
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


def softmax_cross_entropy(
    x: np.ndarray, labels: np.ndarray, groups: int, temperature: float, cost_scale: float | None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Darknet's softmax layer in training, with a one-hot truth per image (`labels`, class
    indices): p = softmax(x), its cost sum(-log p[label]) over the batch, and the gradient it
    passes back, p - truth (Darknet's delta is truth - p; kern's gradients have the loss's own
    sign). A [cost] layer after it (cost_scale: its scale=, None for none) adds its sum of
    squares sum((truth - p)^2) as a second cost, and scale * (p - truth) to that gradient, as
    Darknet does (not the exact gradient of that sum through the softmax). Returns p, the
    costs (one, or the mean of the two as Darknet's network cost), the gradient."""
    p = softmax(x, groups, temperature)
    flat = p.reshape(p.shape[0], -1)
    truth = np.zeros_like(flat)
    truth[np.arange(flat.shape[0]), labels] = 1
    picked = flat[np.arange(flat.shape[0]), labels]
    with np.errstate(divide="ignore"):
        cost = float(-np.log(picked).sum())
    grad = flat - truth
    if cost_scale is not None:
        squares = float(((truth - flat) ** 2).sum())
        cost = (cost + squares) / 2
        grad = grad + x.dtype.type(cost_scale) * (flat - truth)
    return p, cost, grad.reshape(x.shape)


def shortcut_backward(
    dy: np.ndarray, y: np.ndarray, source_shape: tuple[int, ...], alpha: float, beta: float, activation: str
) -> tuple[np.ndarray, np.ndarray]:
    """The gradients of shortcut() for the previous layer's output x and for the source (of
    shape (C, H, W) per image), from dL/dy and the shortcut's output y: d = dy *
    activation'(y); dx = d, times alpha on the common part; the source gets beta * d where it
    was added (sampled or spread as forward)."""
    d = dy * activation_gradient(y, activation)
    dx = d.copy()
    _, c_out, h_out, w_out = y.shape
    c_src, h_src, w_src = source_shape
    stride = max(w_src // w_out, 1)
    sample = max(w_out // w_src, 1)
    c, h, w = min(c_out, c_src), min(h_out, h_src), min(w_out, w_src)
    target = (slice(None), slice(0, c), slice(0, h * sample, sample), slice(0, w * sample, sample))
    dx[target] *= dy.dtype.type(alpha)
    dsource = np.zeros((dy.shape[0], *source_shape), dtype=dy.dtype)
    dsource[:, :c, : h * stride : stride, : w * stride : stride] = dy.dtype.type(beta) * d[target]
    return dx, dsource


def crop_train(
    x: np.ndarray, height: int, width: int, top: int, left: int, flip: bool, scale: float, shift: float
) -> np.ndarray:
    """Darknet's crop layer in training: the window at (top, left) of the image, or of the
    image mirrored left-right when flip (one draw for the whole batch), then x*scale + shift."""
    source = x[:, :, :, ::-1] if flip else x
    window = source[:, :, top : top + height, left : left + width]
    return window * x.dtype.type(scale) + x.dtype.type(shift)
