"""The per-channel ops of Caffe's networks (kern/ref/channels.py) on every fast backend against
the float64 reference, on awkward shapes, each written into a NaN-poisoned output."""

import numpy as np
import pytest

from kern.params import ACTIVATIONS
from kern.ref import channels
from tests.conftest import assert_close

SHAPES = [(2, 5, 7, 3), (1, 33, 4, 4), (3, 17, 1, 1), (2, 64, 9, 11)]


def poisoned(backend, shape):
    """An output of this NCHW shape in the backend's own layout, every element NaN."""
    return backend.asarray(np.full(shape, np.nan, np.float32))


def data(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_affine_matches_ref(rng, fast, ref64, shape, activation):
    x, scale, bias = data(rng, shape), data(rng, shape[1]), data(rng, shape[1])
    expected = ref64.affine(ref64.asarray(x), ref64.prepare_affine(scale, bias, activation=activation))
    prepared = fast.prepare_affine(scale, bias, activation=activation)
    got = fast.affine(fast.asarray(x), prepared, out=poisoned(fast, shape))
    assert_close(fast.to_numpy(got), expected, 1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_affine_with_a_prelu_slope_matches_ref(rng, fast, ref64, shape):
    x, scale, bias, slope = data(rng, shape), data(rng, shape[1]), data(rng, shape[1]), data(rng, shape[1])
    options = dict(activation="linear", slope=slope)
    expected = ref64.affine(ref64.asarray(x), ref64.prepare_affine(scale, bias, **options))
    got = fast.affine(fast.asarray(x), fast.prepare_affine(scale, bias, **options), out=poisoned(fast, shape))
    assert_close(fast.to_numpy(got), expected, 1e-6)
    assert (expected < 0).any() and (expected > 0).any()


@pytest.mark.parametrize("operation", ["max", "prod"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_combine_matches_ref(rng, fast, ref64, shape, operation):
    x, other = data(rng, shape), data(rng, shape)
    expected = ref64.combine(ref64.asarray(x), ref64.asarray(other), operation=operation)
    got = fast.combine(fast.asarray(x), fast.asarray(other), operation=operation, out=poisoned(fast, shape))
    assert_close(fast.to_numpy(got), expected, 1e-6)


@pytest.mark.parametrize("with_add", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scale_channels_matches_ref(rng, fast, ref64, shape, with_add):
    x, factors = data(rng, shape), data(rng, (shape[0], shape[1], 1, 1))
    add = data(rng, shape) if with_add else None
    expected = ref64.scale_channels(ref64.asarray(x), ref64.asarray(factors), None if add is None else ref64.asarray(add))
    got = fast.scale_channels(
        fast.asarray(x), fast.asarray(factors), None if add is None else fast.asarray(add), out=poisoned(fast, shape)
    )
    assert_close(fast.to_numpy(got), expected, 1e-6)


@pytest.mark.parametrize("size", [5, 3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lrn_matches_ref(rng, fast, ref64, shape, size):
    x = data(rng, shape) * 3
    options = dict(size=size, alpha=0.3, beta=0.75, k=2.0)
    expected = ref64.lrn(ref64.asarray(x), **options)
    got = fast.lrn(fast.asarray(x), **options, out=poisoned(fast, shape))
    assert_close(fast.to_numpy(got), expected, 2e-6)


def test_ref_lrn_is_caffes_formula_written_out(rng):
    """The reference against Caffe's rule spelled out channel by channel, clipped at the ends."""
    x = rng.standard_normal((2, 6, 3, 2))
    size, alpha, beta, k = 5, 1e-1, 0.75, 1.0
    expected = np.empty_like(x)
    for c in range(6):
        window = x[:, max(c - 2, 0) : min(c + 3, 6)]
        expected[:, c] = x[:, c] / (k + alpha / size * (window**2).sum(axis=1)) ** beta
    np.testing.assert_allclose(channels.lrn(x, size, alpha, beta, k), expected, rtol=1e-12)


@pytest.mark.parametrize("first,count", [(0, 1), (3, 5), (60, 4), (0, 64), (5, 21)])
def test_slice_channels_matches_ref(rng, fast, ref64, first, count):
    x = data(rng, (3, 64, 5, 7))
    got = fast.slice_channels(fast.asarray(x), first=first, count=count, out=poisoned(fast, (3, count, 5, 7)))
    assert_close(fast.to_numpy(got), ref64.slice_channels(ref64.asarray(x), first=first, count=count), 0)


# (shape, kernel, stride, pad): windows cut by in + pad (ceil rounding), non-square, stride 3.
POOL_CASES = [
    ((2, 5, 14, 14), (3, 3), (2, 2), (0, 0)),
    ((1, 7, 9, 11), (2, 3), (2, 3), (1, 1)),
    ((2, 16, 10, 7), (3, 3), (3, 3), (1, 1)),
    ((1, 3, 5, 5), (5, 5), (1, 1), (2, 2)),
]


def caffe_pooled(size, kernel, stride, pad):
    """Caffe's output size, rounded up, less a window starting past in + pad."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    return out - 1 if pad and (out - 1) * stride >= size + pad else out


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("shape,kernel,stride,pad", POOL_CASES, ids=str)
def test_pool_window_matches_ref(rng, fast, ref64, method, shape, kernel, stride, pad):
    x = data(rng, shape)
    out_size = tuple(caffe_pooled(shape[2 + a], kernel[a], stride[a], pad[a]) for a in (0, 1))
    options = dict(method=method, kernel=kernel, stride=stride, pad=pad, out_size=out_size)
    expected = ref64.pool_window(ref64.asarray(x), **options)
    got = fast.pool_window(fast.asarray(x), **options, out=poisoned(fast, (*shape[:2], *out_size)))
    assert_close(fast.to_numpy(got), expected, 1e-6)


def test_ref_pool_window_divides_by_the_window_clipped_at_in_plus_pad():
    x = np.ones((1, 1, 3, 3))
    # 2x2 windows, stride 2, pad 1: rows -1..0, 1..2, and 3..4 clipped at 3 + 1 = 4 (one row).
    out = channels.pool_window(x, "ave", (2, 2), (2, 2), (1, 1), (2, 2))
    np.testing.assert_allclose(out[0, 0], [[1 / 4, 2 / 4], [2 / 4, 4 / 4]])
    out = channels.pool_window(x, "ave", (3, 3), (2, 2), (0, 0), (2, 2))  # 2..4 clipped at 3: no pad
    np.testing.assert_allclose(out[0, 0], [[1, 1], [1, 1]])  # divides by the cells inside
