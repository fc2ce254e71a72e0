"""The CPU training ops (kern/cpu/training.py) against the float64 reference ops
(kern/ref/training.py) on awkward shapes: odd sizes, stride 2 and 3, padding, groups,
batch > 1. Outputs the kernels write are NaN-poisoned first where the kernel takes them, so an
unwritten element fails; and every kernel that sums gives the same bits on 1 and 2 threads.

Tolerance: |cpu - ref| <= 2e-5 * max|ref| (float32 sums of up to a few thousand terms)."""

import numba
import numpy as np
import pytest

from kern.cpu import batchnorm, conv, elementwise, pool, wgrad
from kern.cpu.training import CpuTraining
from kern.ref.training import RefTraining
from tests.conftest import assert_close

RTOL = 2e-5
ACTIVATIONS = ["leaky", "linear", "logistic", "relu", "tanh"]


@pytest.fixture(scope="module")
def ops():
    return CpuTraining()


@pytest.fixture(scope="module")
def ref():
    return RefTraining(np.float64)


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nhwc(x):
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))


def close(cpu_nhwc, ref_nchw, rtol=RTOL):
    assert_close(nchw(cpu_nhwc), ref_nchw, rtol)


CONV_CASES = [  # (N, C, H, W, F, K, stride, padding, groups)
    (2, 3, 7, 5, 4, 3, 1, 1, 1),
    (1, 4, 9, 8, 6, 3, 2, 1, 2),
    (3, 6, 6, 7, 6, 1, 1, 0, 3),
    (2, 2, 11, 9, 3, 5, 2, 2, 1),
    (2, 8, 5, 5, 8, 3, 1, 0, 8),
    (2, 32, 9, 9, 40, 3, 1, 1, 1),
    (2, 5, 7, 7, 20, 1, 1, 1, 1),
    (1, 4, 10, 9, 6, 7, 2, 3, 1),
    (2, 64, 6, 5, 36, 3, 3, 1, 4),
    (2, 64, 7, 9, 72, 3, 1, 1, 1),  # Winograd (64 channels or more): forward and input gradient
    (1, 72, 5, 6, 64, 3, 1, 1, 1),  # ... its partial panel of filters, odd sizes
]


@pytest.mark.parametrize("n, c, h, w, f, k, stride, padding, groups", CONV_CASES)
def test_conv_forward_and_both_gradients(ops, ref, rng, n, c, h, w, f, k, stride, padding, groups):
    x = rng.standard_normal((n, c, h, w))
    weights = rng.standard_normal((f, c // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    options = dict(stride=stride, padding=padding, groups=groups)
    prepared = ops.conv_weights(weights, groups)
    z = ref.conv2d(x, weights.astype(np.float64), **options)
    close(ops.conv2d(nhwc(x), prepared, **options), z)
    y = ref.conv2d(x, weights.astype(np.float64), bias=bias.astype(np.float64), activation="leaky", **options)
    close(ops.conv2d(nhwc(x), prepared, bias=bias, activation="leaky", **options), y)

    dz = rng.standard_normal(z.shape)
    dx = ref.conv2d_backward_input(dz, weights.astype(np.float64), in_shape=(c, h, w), **options)
    close(ops.conv2d_backward_input(nhwc(dz), prepared, in_shape=(c, h, w), **options), dx)
    earlier = rng.standard_normal((n, c, h, w))  # a gradient holding another layer's share
    got = ops.conv2d_backward_input(nhwc(dz), prepared, in_shape=(c, h, w), into=nhwc(earlier), **options)
    close(got, dx + earlier)

    dw = np.zeros(weights.shape)
    ref.conv2d_backward_weights(x, dz, ksize=k, into=dw, **options)
    start = rng.standard_normal(weights.shape).astype(np.float32)  # the update buffer's momentum
    into = start.copy()
    ops.conv2d_backward_weights(nhwc(x), nhwc(dz), ksize=k, into=into, **options)
    assert_close(into - start, dw, RTOL)


@pytest.mark.parametrize("n, c, h, w, f, k, stride, padding, groups", [
    (4, 3, 28, 27, 32, 3, 1, 1, 1),  # a first layer's: 27 taps
    (3, 8, 31, 29, 20, 3, 2, 1, 2),
    (2, 6, 23, 25, 12, 1, 1, 0, 3),
])
def test_weight_gradient_in_pixel_blocks(ref, rng, monkeypatch, n, c, h, w, f, k, stride, padding, groups):
    """Small weight gradients are summed over blocks of pixels, then the blocks in order
    (blocks of 128 pixels here, 2048 in use): against float64, and the same bits on 1 and 2
    threads and on both vector widths."""
    monkeypatch.setattr(wgrad, "BLOCK_PIXELS", 128)
    x = rng.standard_normal((n, c, h, w))
    options = dict(stride=stride, padding=padding, groups=groups)
    dz = rng.standard_normal(ref.conv2d(x, np.zeros((f, c // groups, k, k)), **options).shape)
    assert wgrad.pixel_blocks(dz[:, 0].size, c // groups * k * k * 16) >= 3
    dw = np.zeros((f, c // groups, k, k))
    ref.conv2d_backward_weights(x, dz, ksize=k, into=dw, **options)
    padded = conv.pad(nhwc(x), padding) if padding else nhwc(x)
    results = []
    for threads, lanes in ((1, 8), (2, 8), (1, 16), (2, 16)):
        numba.set_num_threads(threads)
        results.append(wgrad.conv2d_backward_weights(padded, nhwc(dz), k, stride, groups, threads, lanes))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert_close(results[0], dw, RTOL)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 70, 3, 5), (4, 10, 1, 1), (1, 16, 33, 31)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_batchnorm_forward_and_backward(ops, ref, rng, shape, activation):
    channels = shape[1]
    z = rng.standard_normal(shape) * 3 + 1
    scales, biases = rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels)
    rolling = [rng.uniform(0.5, 2, channels) for _ in range(2)]
    y, mean, variance = ref.batchnorm_forward(z, scales, biases, *[r.copy() for r in rolling], activation)
    cpu_rolling = [r.astype(np.float32) for r in rolling]
    y32, mean32, variance32 = ops.batchnorm_forward(nhwc(z), scales.astype(np.float32), biases.astype(np.float32),
                                                    *cpu_rolling, activation)
    close(y32, y)
    assert_close(mean32, mean, 1e-6)
    assert_close(variance32, variance, 1e-6)
    expected_rolling = [0.99 * r + 0.01 * s for r, s in zip(rolling, (mean, variance))]
    for got, want in zip(cpu_rolling, expected_rolling):
        assert_close(got, want, 1e-6)

    dy = rng.standard_normal(shape)
    ds, db = np.zeros(channels), np.zeros(channels)
    dz = ref.batchnorm_backward(dy, y, z, mean, variance, scales, biases, activation, scales_into=ds, biases_into=db)
    ds32, db32 = np.ones(channels, np.float32), np.ones(channels, np.float32)  # buffers holding momentum
    params32 = [a.astype(np.float32) for a in (scales, biases)]
    dz32 = ops.batchnorm_backward(nhwc(dy), y32, nhwc(z), mean32, variance32, *params32, activation,
                                  scales_into=ds32, biases_into=db32)
    close(dz32, dz, 1e-4)  # d = dy * act'(y) from float32 y: a leaky kink may flip at y ~ 0
    assert_close(ds32 - 1, ds, 1e-4)
    assert_close(db32 - 1, db, 1e-4)
    if activation in ("leaky", "linear"):  # y's sign comes from z: y itself is never read
        poisoned = np.full_like(y32, np.nan)
        again = ops.batchnorm_backward(nhwc(dy), poisoned, nhwc(z), mean32, variance32, *params32, activation,
                                       scales_into=ds32, biases_into=db32)
        np.testing.assert_array_equal(again, dz32)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_and_bias_gradient(ops, ref, rng, activation):
    y = rng.standard_normal((3, 4, 5, 7))
    if activation == "logistic":
        y = 1 / (1 + np.exp(-y))
    dy = rng.standard_normal(y.shape)
    db = np.zeros(4)
    dz = ref.activation_backward(dy, y, activation, biases_into=db)
    db32 = np.zeros(4, np.float32)
    close(ops.activation_backward(nhwc(dy), nhwc(y), activation, biases_into=db32), dz)
    assert_close(db32, db, 1e-5)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, 1), (3, 1, 2), (3, 2, 2), (2, 1, 1), (5, 3, 4)])
def test_maxpool_forward_and_backward(ops, ref, rng, size, stride, padding):
    x = rng.standard_normal((2, 19, 7, 6)).astype(np.float32).astype(np.float64)
    y, where = ref.maxpool_forward(x, size=size, stride=stride, padding=padding)
    y32, winners = ops.maxpool_forward(nhwc(x), size=size, stride=stride, padding=padding)
    np.testing.assert_array_equal(nchw(y32), y)
    channels = x.shape[1]
    expected = np.where(where >= 0, where * channels + np.arange(channels).reshape(1, -1, 1, 1), -1)
    np.testing.assert_array_equal(nchw(winners.where), expected)  # (y * W + x) * C + c
    where32 = winners
    dy = rng.standard_normal(y.shape)
    close(ops.maxpool_backward(nhwc(dy), where32, in_shape=x.shape[1:]), ref.maxpool_backward(dy, where, in_shape=x.shape[1:]))
    earlier = rng.standard_normal(x.shape)
    got = ops.maxpool_backward(nhwc(dy), where32, in_shape=x.shape[1:], into=nhwc(earlier))
    close(got, ref.maxpool_backward(dy, where, in_shape=x.shape[1:]) + earlier)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, 0), (2, 2, 1), (3, 2, 1)])
def test_maxpool_ties_go_to_the_first_cell_in_window_order(ops, ref, rng, size, stride, padding):
    """Values of 0, 1 and 2 only: most windows hold ties, which Darknet's strict > gives to the
    first in window order (the 2 x 2 windows' pass of their own included)."""
    x = rng.integers(0, 3, (2, 5, 8, 7)).astype(np.float64)
    y, where = ref.maxpool_forward(x, size=size, stride=stride, padding=padding)
    y32, winners = ops.maxpool_forward(nhwc(x), size=size, stride=stride, padding=padding)
    np.testing.assert_array_equal(nchw(y32), y)
    channels = x.shape[1]
    expected = np.where(where >= 0, where * channels + np.arange(channels).reshape(1, -1, 1, 1), -1)
    np.testing.assert_array_equal(nchw(winners.where), expected)


def test_maxpool_kernel_writes_every_output(rng):
    x = rng.standard_normal((2, 5, 6, 17)).astype(np.float32)
    out, where = np.full((2, 3, 4, 17), np.nan, np.float32), np.full((2, 3, 4, 17), -7, np.int32)
    pool.maxpool_argmax(x, 3, 2, 2, out, where)
    assert np.isfinite(out).all() and (where >= 0).all()
    dx = np.full_like(x, np.nan)
    pool.maxpool_backward(out, where, 3, 2, 2, dx, False)
    assert np.isfinite(dx).all()


def test_avgpool_backward(ops, ref, rng):
    dy = rng.standard_normal((3, 21, 1, 1))
    close(ops.avgpool_backward(nhwc(dy), in_shape=(21, 5, 7)), ref.avgpool_backward(dy, in_shape=(21, 5, 7)))
    poisoned = np.full((3, 5, 7, 21), np.nan, np.float32)
    pool.avgpool_backward(nhwc(dy), poisoned, False)
    close(poisoned, ref.avgpool_backward(dy, in_shape=(21, 5, 7)))


@pytest.mark.parametrize("batchnorm_input", [(4, 3, 5, 6), (3, 40, 1, 1)])
def test_connected_forward_and_gradients(ops, ref, rng, batchnorm_input):
    n, c, h, w = batchnorm_input
    x = rng.standard_normal(batchnorm_input)
    weights = rng.standard_normal((11, c * h * w)).astype(np.float32)
    w64 = weights.astype(np.float64)
    close(ops.connected(nhwc(x), weights), ref.connected(x, w64))
    dz = rng.standard_normal((n, 11, 1, 1))
    close(ops.connected_backward_input(nhwc(dz), weights, in_shape=(c, h, w)),
          ref.connected_backward_input(dz, w64, in_shape=(c, h, w)))
    dw, dw32 = np.zeros(weights.shape), np.zeros(weights.shape, np.float32)
    ref.connected_backward_weights(x, dz, into=dw)
    ops.connected_backward_weights(nhwc(x), nhwc(dz), into=dw32)
    assert_close(dw32, dw, RTOL)


@pytest.mark.parametrize("out_shape, source_shape", [
    ((2, 4, 6, 6), (2, 4, 6, 6)), ((2, 4, 6, 6), (2, 6, 12, 12)), ((2, 6, 6, 6), (2, 3, 3, 3)),
])
@pytest.mark.parametrize("activation", ["linear", "leaky"])
def test_shortcut_backward(ops, ref, rng, out_shape, source_shape, activation):
    x, source = rng.standard_normal(out_shape), rng.standard_normal(source_shape)
    y = ref.shortcut(x, source, alpha=0.7, beta=1.3, activation=activation)
    dy = rng.standard_normal(out_shape)
    options = dict(source_shape=source_shape[1:], alpha=0.7, beta=1.3, activation=activation)
    dx, dsource = ref.shortcut_backward(dy, y, **options)
    dx32, dsource32 = ops.shortcut_backward(nhwc(dy), nhwc(y), **options)
    close(dx32, dx)
    close(dsource32, dsource)


def test_route_dropout_crop_and_add(ops, ref, rng):
    dy = rng.standard_normal((2, 9, 3, 4))
    for got, want in zip(ops.route_backward(nhwc(dy), [2, 4, 3]), ref.route_backward(dy, [2, 4, 3])):
        close(got, want)
    x = rng.standard_normal((2, 5, 4, 3))
    keep = rng.random(x.shape) >= 0.4
    mask, want = ops.dropout_mask(keep, 1 / 0.6), ref.dropout_mask(keep, 1 / 0.6)
    close(ops.dropout(nhwc(x), mask), ref.dropout(x, want))
    close(ops.dropout_backward(nhwc(x), mask), ref.dropout_backward(x, want))
    for flip in (False, True):
        options = dict(height=3, width=2, top=1, left=1, flip=flip, scale=2.0, shift=-1.0)
        close(ops.crop(nhwc(x), **options), ref.crop(x, **options))
    a, b = rng.standard_normal((3, 4, 5, 6)), rng.standard_normal((3, 4, 5, 6))
    close(ops.add(nhwc(a), nhwc(b)), a + b)


@pytest.mark.parametrize("cost_scale", [None, 0.5])
def test_softmax_cross_entropy(ops, ref, rng, cost_scale):
    x = rng.standard_normal((5, 10, 1, 1)) * 4
    labels = rng.integers(0, 10, 5)
    options = dict(groups=1, temperature=1.0, cost_scale=cost_scale)
    p, cost, dx = ref.softmax_cross_entropy(x, labels, **options)
    p32, cost32, dx32 = ops.softmax_cross_entropy(nhwc(x), labels, **options)
    close(p32, p)
    close(dx32, dx)
    assert abs(cost32 - cost) <= 1e-5 * abs(cost)


def test_sgd_update_is_darknets_float32_arithmetic(ops, rng):
    """Bit for bit what Darknet's C does in float32: update += decay*param (weights only),
    param += -rate*update... written with the loss's sign; then update *= momentum."""
    param, update = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    rate, momentum, decay = np.float32(0.1) / np.float32(128), np.float32(0.9), np.float32(0.0005) * np.float32(128)
    expected_update = update + decay * param
    expected_param = param - rate * expected_update
    expected_update = expected_update * momentum
    ops.sgd_update(param, update, rate=float(rate), momentum=float(momentum), decay=float(decay))
    np.testing.assert_array_equal(param, expected_param)
    np.testing.assert_array_equal(update, expected_update)


def test_sums_are_the_same_bits_on_any_thread_count(ops, rng):
    """The weight gradient, batchnorm statistics and gradient sums, Winograd: one order for any
    thread count."""
    x = nhwc(rng.standard_normal((4, 24, 17, 19)))
    dz = nhwc(rng.standard_normal((4, 40, 17, 19)))
    x64 = nhwc(rng.standard_normal((3, 64, 9, 7)))
    w64 = rng.standard_normal((48, 64, 3, 3)).astype(np.float32)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        ops_n = CpuTraining(threads=threads)
        winograd = ops_n.conv2d(x64, ops_n.conv_weights(w64, 1), stride=1, padding=1, groups=1)
        dw = np.zeros((40, 24, 3, 3), np.float32)
        CpuTraining(threads=threads).conv2d_backward_weights(x, dz, ksize=3, stride=1, padding=1, groups=1, into=dw)
        y, mean, variance = batchnorm.batchnorm_forward(dz, np.ones(40, np.float32), np.zeros(40, np.float32),
                                                        np.zeros(40, np.float32), np.ones(40, np.float32), 1)
        ones, zeros = np.ones(40, np.float32), np.zeros(40, np.float32)
        dz_in, dscales, dbiases = batchnorm.batchnorm_backward(dz.copy(), y, dz, mean, variance, ones, zeros, 1)
        results.append([dw, y, mean, variance, dz_in, dscales, dbiases, winograd])
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_kernels_write_every_output(rng):
    """Poisoned outputs: the element-wise training kernels leave no element unwritten."""
    rows = rng.standard_normal((37, 13)).astype(np.float32)
    out = np.full_like(rows, np.nan)
    batchnorm._normalize(rows, np.zeros(13, np.float32), np.ones(13, np.float32), np.zeros(13, np.float32), 1, out)
    assert np.isfinite(out).all()
    dy = nhwc(rng.standard_normal((2, 5, 4, 6)))
    dx, dsource = np.full_like(dy, np.nan), np.zeros((2, 8, 12, 5), np.float32)
    elementwise.shortcut_backward(dy, dy, 1.0, 1.0, 0, dx, dsource)
    assert np.isfinite(dx).all()
    out = np.full_like(dy, np.nan)
    elementwise.dropout(dy, np.ones(dy.shape, np.uint8), 2.0, out)
    assert np.isfinite(out).all()
