"""Activations as one inlined scalar function; kernels take the activation as an int code."""

import numpy as np
from numba import njit

LINEAR, LEAKY, RELU, LOGISTIC = 0, 1, 2, 3  # the order of kern.params.ACTIVATIONS
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_LEAK = np.float32(0.1)


@njit(inline="always", fastmath=True, cache=True)
def activate_scalar(v, code):
    if code == LEAKY:
        return v if v > _ZERO else v * _LEAK
    if code == RELU:
        return v if v > _ZERO else _ZERO
    if code == LOGISTIC:
        return _ONE / (_ONE + np.exp(-v))
    return v
