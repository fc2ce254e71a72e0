"""Activations as one inlined scalar function; kernels take the activation as an int code."""

import numpy as np
from numba import njit

from kern.cpu.simd import EIGHT, SIXTEEN, VectorOps, add8, load8, store8

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


def _vector_activations(ops: VectorOps):
    """activate_scalar on a vector of ops.lanes lanes at once; the same values, since Darknet's
    leaky "v > 0 ? v : 0.1 v" is max(v, 0.1 v), and relu max(v, 0). The same operations for
    every width, lane by lane: 8- and 16-lane kernels agree bit for bit. Returns (activate,
    rectify): rectify is activate for the codes up to RELU (linear, leaky, relu: one max at
    most) and returns v for the others, for kernels that inline it where a caller checked the
    code (every inlined copy of activate's exp costs seconds of compile time)."""
    add, sub, mul, div, vmax, exp, splat = ops.add, ops.sub, ops.mul, ops.div, ops.max, ops.exp, ops.splat

    @njit(inline="always", cache=True)
    def rectify(v, code):
        if code == LEAKY:
            return vmax(v, mul(v, splat(LEAK)))
        if code == RELU:
            return vmax(v, splat(_ZERO))
        return v

    @njit(inline="always", cache=True)
    def activate(v, code):
        if code == LOGISTIC:
            one = splat(_ONE)
            return div(one, add(one, exp(mul(vmax(v, splat(LOGISTIC_FLOOR)), splat(-_ONE)))))
        if code == TANH:
            one = splat(_ONE)
            floored = vmax(v, splat(TANH_FLOOR))
            return sub(div(splat(_TWO), add(one, exp(mul(floored, splat(-_TWO))))), one)
        return rectify(v, code)

    return activate, rectify


activate8, rectify8 = _vector_activations(EIGHT)  # v: a simd.float32x8
_, rectify16 = _vector_activations(SIXTEEN)  # v: a simd.float32x16 (the 16-lane kernels inline no exp)


@njit(cache=True)
def finish_outputs(row, column, bias, first, count, act, residual, residual_act):
    """row[column + j] = act(row[column + j] + bias[first + j]) for j < count, then, where
    residual_act >= 0, residual_act(that + residual[first + j]): the store of a GEMM's or
    Winograd's outputs for any activation, 8 lanes at a time (activate_scalar's values).
    Not inlined, on purpose: one compiled copy serves every kernel, for their rare outputs
    (logistic, tanh, a partial panel), while their registers handle linear, leaky and relu.
    Inlined, its exps made conv_winograd compile in 9 s, conv_gemm16 in 7."""
    whole = count - count % 8
    for j in range(0, whole, 8):
        v = activate8(add8(load8(row, column + j), load8(bias, first + j)), act)
        if residual_act >= 0:
            v = activate8(add8(v, load8(residual, first + j)), residual_act)
        store8(row, column + j, v)
    for j in range(whole, count):
        v = activate_scalar(row[column + j] + bias[first + j], act)
        if residual_act >= 0:
            v = activate_scalar(v + residual[first + j], residual_act)
        row[column + j] = v


@njit(cache=True)
def activate_vectors(row, first, count, act):
    """row[first : first + count] = act(that), in place, 8 lanes at a time (count: whole
    vectors). Not inlined, as finish_outputs: one compiled copy for the grouped kernels."""
    for i in range(first, first + count, 8):
        store8(row, i, activate8(load8(row, i), act))


@njit(inline="always", fastmath=True, cache=True)
def activate_row(row, act):
    """row[:] = activate_scalar(row[:], act), in place, one loop per activation: a loop with
    activate_scalar's branches inside is not vectorized (Caffe's BatchNorm + Scale + ReLU on
    56 x 56 x 192 took 0.84 ms so, 0.045 ms as a loop of its own; AMD EPYC Zen 4, 2 threads)."""
    if act == LEAKY:
        for i in range(row.size):
            row[i] = leaky_scalar(row[i])
    elif act == RELU:
        for i in range(row.size):
            v = row[i]
            row[i] = v if v > _ZERO else _ZERO
    elif act != LINEAR:
        for i in range(row.size):
            row[i] = activate_scalar(row[i], act)


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
