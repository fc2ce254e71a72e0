"""Activations as one inlined scalar function; kernels take the activation as an int code."""

import numpy as np
from numba import njit

from kern.cpu.simd import add8, div8, exp8, max8, mul8, splat8

LINEAR, LEAKY, RELU, LOGISTIC = 0, 1, 2, 3  # the order of kern.params.ACTIVATIONS
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
LEAK = np.float32(0.1)  # leaky's slope below 0


@njit(inline="always", fastmath=True, cache=True)
def activate_scalar(v, code):
    if code == LEAKY:
        return v if v > _ZERO else v * LEAK
    if code == RELU:
        return v if v > _ZERO else _ZERO
    if code == LOGISTIC:
        return _ONE / (_ONE + np.exp(-v))
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
        return div8(one, add8(one, exp8(mul8(v, splat8(-_ONE)))))
    return v


@njit(inline="always", fastmath=True, cache=True)
def gradient_scalar(y, code):
    """d activation / dx from the output y, as Darknet's gradient_array (kern/ref/elementwise.py)."""
    if code == LEAKY:
        return _ONE if y > _ZERO else LEAK
    if code == RELU:
        return _ONE if y > _ZERO else _ZERO
    if code == LOGISTIC:
        return (_ONE - y) * y
    return _ONE
