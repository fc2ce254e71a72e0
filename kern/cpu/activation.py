"""Activations as one inlined scalar function; kernels take the activation as an int code."""

import numpy as np
from numba import njit

from kern.cpu.simd import add8, div8, exp8, max8, mul8, splat8, sub8

LINEAR, LEAKY, RELU, LOGISTIC, TANH = 0, 1, 2, 3, 4  # the order of kern.params.ACTIVATIONS
_TWO = np.float32(2.0)
TANH_FLOOR = np.float32(-15.0)
LOGISTIC_FLOOR = np.float32(-88.0)  # e^88 < FLT_MAX
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
LEAK = np.float32(0.1)  # leaky's slope below 0


@njit(inline="always", cache=True)
def leaky_scalar(v):
    """Darknet's leaky: v above 0, 0.1 v below (alone, a loop of it vectorizes)."""
    return v if v > _ZERO else v * LEAK


@njit(inline="always", fastmath=True, cache=True)
def activate_scalar(v, code):
    if code == LEAKY:
        return leaky_scalar(v)
    if code == RELU:
        return v if v > _ZERO else _ZERO
    if code == LOGISTIC:  # e^-v finite (v >= -88), which fastmath's kernels assume: NaN else
        return _ONE / (_ONE + np.exp(-max(v, LOGISTIC_FLOOR)))
    if code == TANH:  # as activate8 computes it: 2 / (1 + e^-2v) - 1, v >= -15 (-1 in float32
        # already; e^-2v stays finite, which fastmath's kernels assume)
        return _TWO / (_ONE + np.exp(-_TWO * max(v, TANH_FLOOR))) - _ONE
    return v


@njit(inline="always", cache=True)
def activate8(v, code):
    """activate_scalar on eight lanes at once (v: a simd.float32x8); the same values, since
    Darknet's leaky "v > 0 ? v : 0.1 v" is max(v, 0.1 v), and relu max(v, 0)."""
    if code == LEAKY:
        return max8(v, mul8(v, splat8(LEAK)))
    if code == RELU:
        return max8(v, splat8(_ZERO))
    if code == LOGISTIC:
        one = splat8(_ONE)
        return div8(one, add8(one, exp8(mul8(max8(v, splat8(LOGISTIC_FLOOR)), splat8(-_ONE)))))
    if code == TANH:
        one = splat8(_ONE)
        floored = max8(v, splat8(TANH_FLOOR))
        return sub8(div8(splat8(_TWO), add8(one, exp8(mul8(floored, splat8(-_TWO))))), one)
    return v


@njit(inline="always", cache=True)
def leaky_gradient(y):
    """Leaky's derivative from its output (alone, a loop of it vectorizes)."""
    return _ONE if y > _ZERO else LEAK


@njit(inline="always", fastmath=True, cache=True)
def gradient_scalar(y, code):
    """d activation / dx from the output y, as Darknet's gradient_array (kern/ref/elementwise.py)."""
    if code == LEAKY:
        return leaky_gradient(y)
    if code == RELU:
        return _ONE if y > _ZERO else _ZERO
    if code == LOGISTIC:
        return (_ONE - y) * y
    if code == TANH:
        return _ONE - y * y
    return _ONE
