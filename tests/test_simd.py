"""kern/cpu/simd.py: each float32x8 operation against NumPy, lane by lane."""

import numpy as np
import pytest
from numba import njit

from kern.cpu.activation import activate8, activate_scalar
from kern.cpu.simd import (
    add8,
    broadcast8,
    div8,
    exp8,
    fma8,
    lane8,
    load8,
    load_halves,
    max8,
    mul8,
    shuffle8,
    splat8,
    store8,
    store_halves,
)
from kern.params import ACTIVATIONS


@njit(cache=True)
def _every_op(a, b, c, out):
    """out[row] = one operation on a[2:10], b[0:8], c[0:8] (offsets test unaligned loads)."""
    x, y, z = load8(a, 2), load8(b, 0), load8(c, 0)
    store8(out[0], 0, fma8(x, y, z))
    store8(out[1], 0, add8(x, y))
    store8(out[2], 0, mul8(x, y))
    store8(out[3], 0, div8(x, y))
    store8(out[4], 0, max8(x, y))
    store8(out[5], 0, exp8(x))
    store8(out[6], 0, splat8(a[3]))
    store8(out[7], 0, broadcast8(b, 5))
    for j in range(8):
        out[8, j] = lane8(z, j)


def test_every_operation_matches_numpy(rng):
    a = rng.standard_normal(12).astype(np.float32)
    b = rng.uniform(0.5, 2, 8).astype(np.float32) * rng.choice([-1, 1], 8).astype(np.float32)
    c = rng.standard_normal(8).astype(np.float32)
    out = np.full((9, 8), np.nan, np.float32)
    _every_op(a, b, c, out)
    x = a[2:10]
    np.testing.assert_allclose(out[0], x.astype(np.float64) * b + c, rtol=1e-6, atol=1e-6)
    assert np.array_equal(out[1], x + b) and np.array_equal(out[2], x * b)
    np.testing.assert_allclose(out[3], x / b, rtol=1e-6)
    assert np.array_equal(out[4], np.maximum(x, b))
    np.testing.assert_allclose(out[5], np.exp(x), rtol=1e-6)
    assert (out[6] == a[3]).all() and (out[7] == b[5]).all() and np.array_equal(out[8], c)


@njit(cache=True)
def _activations(x, code, vector_out, scalar_out):
    store8(vector_out, 0, activate8(load8(x, 0), code))
    for j in range(8):
        scalar_out[j] = activate_scalar(x[j], code)


def test_vector_activations_equal_the_scalar_ones(rng):
    x = rng.standard_normal(8).astype(np.float32) * 4
    for code, name in enumerate(ACTIVATIONS):
        vector, scalar = np.full(8, np.nan, np.float32), np.full(8, np.nan, np.float32)
        _activations(x, code, vector, scalar)
        if name in ("logistic", "tanh"):  # exp per lane through LLVM, against NumPy's scalar exp
            np.testing.assert_allclose(vector, scalar, rtol=1e-6)
        else:
            assert np.array_equal(vector, scalar), name


_interleave = shuffle8((0, 8, 1, 9, 4, 12, 5, 13))


@njit(cache=True)
def _lane_moves(a, out):
    """out[0] = the shuffle of a[0:8] and a[8:16]; out[1] = load_halves(a, 5, 13);
    store_halves of a[0:8] to out[2, 1:5] and out[2, 11:15] (out is 3 x 16)."""
    x, y = load8(a, 0), load8(a, 8)
    store8(out[0], 0, _interleave(x, y))
    store8(out[1], 0, load_halves(a, 5, 13))
    store_halves(out[2], 1, 11, x)


def test_shuffles_and_half_vectors_move_the_right_lanes(rng):
    a = rng.standard_normal(17).astype(np.float32)
    out = np.full((3, 16), np.nan, np.float32)
    _lane_moves(a, out)
    assert np.array_equal(out[0, :8], a[[0, 8, 1, 9, 4, 12, 5, 13]])
    assert np.array_equal(out[1, :8], np.concatenate([a[5:9], a[13:17]]))
    assert np.array_equal(out[2, 1:5], a[0:4]) and np.array_equal(out[2, 11:15], a[4:8])
    assert np.isnan(out[:2, 8:]).all() and np.isnan(out[2, [0, 5, 6, 7, 8, 9, 10, 15]]).all()
    with pytest.raises(ValueError, match="8 lane indices"):
        shuffle8((0, 1, 2, 16, 4, 5, 6, 7))


def test_cached_kernels_are_dropped_when_a_source_they_inline_changes(tmp_path):
    """Numba keys its cache on a kernel's own file only (kern/cpu/cache.py)."""
    from kern.cpu.cache import drop_stale_kernels

    source, cache = tmp_path / "activation.py", tmp_path / "__pycache__"
    source.write_text("LEAK = 0.1\n")
    assert drop_stale_kernels((source,), cache)  # no stamp yet
    (cache / "gemm.conv_gemm-151.py311.nbi").write_bytes(b"index")
    (cache / "gemm.conv_gemm-151.py311.1.nbc").write_bytes(b"code")
    assert not drop_stale_kernels((source,), cache) and len(list(cache.glob("*.nb?"))) == 2
    source.write_text("LEAK = 0.2\n")
    assert drop_stale_kernels((source,), cache) and not list(cache.glob("*.nb?"))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_of_huge_values_are_finite(cpu, ref64, activation):
    """fastmath kernels assume no infinities: e^-v for v far below 0 overflowed to NaN in the
    logistic (a Caffe net's Sigmoid after values of -77,000) before the exponent was floored."""
    x = np.array([-1e30, -77340.0, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e30] * 2, np.float32)
    x = x.reshape(1, 1, 4, 5)
    got = cpu.to_numpy(cpu.activate(cpu.asarray(x), activation))
    with np.errstate(over="ignore"):  # NumPy's e^1e30: inf, and 1 / inf = 0
        expected = ref64.activate(x.astype(np.float64), activation)
    assert np.all(np.isfinite(got)), got
    if activation in ("logistic", "tanh"):
        np.testing.assert_allclose(got, expected, atol=1e-6)
