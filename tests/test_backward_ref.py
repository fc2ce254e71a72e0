"""The float64 references of every backward op (kern/ref) against finite differences of their
forward ops: the ground truth the fast backends are then compared with (test_backward_cpu.py).

Each check draws a random cotangent r, takes L = sum(forward(x) * r), and compares the
reference's dL/dx (and dL/dW) with central differences at random entries, in float64. Shapes
are awkward on purpose: odd sizes, stride 2, padding, groups, batch > 1."""

import numpy as np
import pytest

from kern.ref import batchnorm, elementwise, pool
from kern.ref.conv import conv2d_backward_input, conv2d_backward_weights, conv2d_im2col

EPS = 1e-6


def numeric_gradient(f, x, rng, entries=12):
    """Central differences of the scalar f at `entries` random entries of x: (indices, values)."""
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=min(entries, flat.size), replace=False)
    values = []
    for i in picks:
        keep = flat[i]
        flat[i] = keep + EPS
        up = f()
        flat[i] = keep - EPS
        down = f()
        flat[i] = keep
        values.append((up - down) / (2 * EPS))
    return picks, np.array(values)


def assert_gradient(analytic, f, x, rng, rtol=1e-6, atol=1e-8):
    """|analytic - numeric| <= rtol * max|analytic| + atol at the picked entries (atol: the
    differences' own rounding, about 1e-16 * |L| / EPS)."""
    picks, numeric = numeric_gradient(f, x, rng)
    got = analytic.reshape(-1)[picks]
    assert np.abs(got - numeric).max() <= rtol * np.abs(analytic).max() + atol, (got, numeric)


CONV_CASES = [  # (N, C, H, W, F, K, stride, padding, groups)
    (2, 3, 7, 5, 4, 3, 1, 1, 1),
    (1, 4, 9, 8, 6, 3, 2, 1, 2),
    (3, 6, 6, 7, 6, 1, 1, 0, 3),
    (2, 2, 11, 9, 3, 5, 2, 2, 1),
    (1, 3, 8, 8, 5, 2, 2, 0, 1),
    (2, 8, 5, 5, 8, 3, 1, 0, 8),
]


@pytest.mark.parametrize("n, c, h, w, f, k, stride, padding, groups", CONV_CASES)
def test_conv_backward_matches_finite_differences(rng, n, c, h, w, f, k, stride, padding, groups):
    x = rng.standard_normal((n, c, h, w))
    weights = rng.standard_normal((f, c // groups, k, k))
    y = conv2d_im2col(x, weights, stride, padding, groups)
    r = rng.standard_normal(y.shape)

    def loss():
        return float((conv2d_im2col(x, weights, stride, padding, groups) * r).sum())

    assert_gradient(conv2d_backward_input(r, weights, (c, h, w), stride, padding, groups), loss, x, rng)
    assert_gradient(conv2d_backward_weights(x, r, k, stride, padding, groups), loss, weights, rng)


@pytest.mark.parametrize("shape", [(3, 5, 4, 3), (2, 7, 1, 1), (1, 4, 6, 9)])
@pytest.mark.parametrize("activation", ["leaky", "linear", "logistic", "relu", "tanh"])
def test_batchnorm_backward_is_the_gradient_of_its_exact_forward(rng, shape, activation):
    """Darknet's backward formula is the exact gradient of the 'exact' forward (biased
    variance, sqrt(variance + 1e-5)); Darknet's own forward differs from that by O(1/M)."""
    z = rng.standard_normal(shape) * 2 + 0.5
    scales, biases = rng.uniform(0.5, 1.5, shape[1]), rng.standard_normal(shape[1])
    r = rng.standard_normal(shape)

    def forward(z_, scales_, biases_):
        rm, rv = np.zeros(shape[1]), np.ones(shape[1])
        return batchnorm.batchnorm_forward(z_, scales_, biases_, rm, rv, activation, "exact")

    y, mean, variance = forward(z, scales, biases)
    dz, dscales, dbiases = batchnorm.batchnorm_backward(r, y, z, mean, variance, scales, activation, "exact")

    def loss():
        return float((forward(z, scales, biases)[0] * r).sum())

    assert_gradient(dz, loss, z, rng)
    assert_gradient(dscales, loss, scales, rng)
    assert_gradient(dbiases, loss, biases, rng)


def test_batchnorm_darknet_forward_statistics_and_rolling(rng):
    z = rng.standard_normal((3, 4, 5, 2))
    rm, rv = np.full(4, 0.5), np.full(4, 2.0)
    y, mean, variance = batchnorm.batchnorm_forward(z, np.ones(4), np.zeros(4), rm, rv, "linear")
    values = z.transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(mean, values.mean(axis=1))
    np.testing.assert_allclose(variance, values.var(axis=1, ddof=1))  # unbiased, as Darknet
    np.testing.assert_allclose(rm, 0.99 * 0.5 + 0.01 * mean)
    np.testing.assert_allclose(rv, 0.99 * 2.0 + 0.01 * variance)
    expected = (z - mean.reshape(1, -1, 1, 1)) / (np.sqrt(variance).reshape(1, -1, 1, 1) + 1e-6)
    np.testing.assert_allclose(y, expected)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, 1), (3, 1, 2), (3, 2, 2), (2, 1, 1), (5, 3, 4)])
def test_maxpool_backward_matches_finite_differences(rng, size, stride, padding):
    x = rng.standard_normal((2, 3, 7, 6))
    y, where = pool.maxpool_argmax(x, size, stride, padding)
    np.testing.assert_array_equal(y, pool.maxpool(x, size, stride, padding))
    r = rng.standard_normal(y.shape)
    dx = pool.maxpool_backward(r, where, x.shape[1:])
    assert_gradient(dx, lambda: float((pool.maxpool(x, size, stride, padding) * r).sum()), x, rng)


def test_maxpool_takes_the_first_strict_maximum():
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]]]])
    _, where = pool.maxpool_argmax(x, 2, 2, 0)
    assert where.reshape(-1).tolist() == [1]  # (0, 1) before (1, 0)


def test_avgpool_backward_matches_finite_differences(rng):
    x = rng.standard_normal((2, 5, 3, 7))
    r = rng.standard_normal((2, 5, 1, 1))
    dx = pool.avgpool_backward(r, x.shape[1:])
    assert_gradient(dx, lambda: float((pool.avgpool(x) * r).sum()), x, rng)


@pytest.mark.parametrize("activation", ["leaky", "linear", "logistic", "relu", "tanh"])
def test_activation_gradient_from_the_output(rng, activation):
    x = rng.standard_normal((2, 3, 4, 5))
    r = rng.standard_normal(x.shape)
    dx = r * elementwise.activation_gradient(elementwise.activate(x, activation), activation)
    assert_gradient(dx, lambda: float((elementwise.activate(x, activation) * r).sum()), x, rng)


@pytest.mark.parametrize("out_shape, source_shape", [
    ((2, 4, 6, 6), (2, 4, 6, 6)), ((2, 4, 6, 6), (2, 6, 12, 12)), ((2, 6, 6, 6), (2, 3, 3, 3)),
])
@pytest.mark.parametrize("activation", ["linear", "leaky"])
def test_shortcut_backward_matches_finite_differences(rng, out_shape, source_shape, activation):
    x, source = rng.standard_normal(out_shape), rng.standard_normal(source_shape)
    alpha, beta = 0.7, 1.3
    y = elementwise.shortcut(x, source, alpha, beta, activation)
    r = rng.standard_normal(y.shape)
    dx, dsource = elementwise.shortcut_backward(r, y, source_shape[1:], alpha, beta, activation)

    def loss():
        return float((elementwise.shortcut(x, source, alpha, beta, activation) * r).sum())

    assert_gradient(dx, loss, x, rng)
    assert_gradient(dsource, loss, source, rng)


@pytest.mark.parametrize("groups, temperature", [(1, 1.0), (2, 1.0)])
def test_softmax_cross_entropy_gradient(rng, groups, temperature):
    x = rng.standard_normal((3, 8, 1, 1)) * 3
    labels = np.array([1, 7, 4])

    def loss():
        return elementwise.softmax_cross_entropy(x, labels, groups, temperature, None)[1]

    p, cost, dx = elementwise.softmax_cross_entropy(x, labels, groups, temperature, None)
    if groups == 1:  # the exact gradient of -sum log p[label]
        assert_gradient(dx, loss, x, rng)
    truth = np.zeros((3, 8))
    truth[[0, 1, 2], labels] = 1
    np.testing.assert_allclose(dx.reshape(3, 8), p.reshape(3, 8) - truth)  # Darknet's, any groups


def test_cost_after_softmax_adds_its_scaled_delta(rng):
    """Darknet's [cost] after [softmax]: the network cost is the mean of the two costs, and
    the gradient at the logits (1 + scale) * (p - truth)."""
    x = rng.standard_normal((2, 5, 1, 1))
    labels = np.array([3, 0])
    p, xent, dx = elementwise.softmax_cross_entropy(x, labels, 1, 1.0, None)
    _, both, dx_cost = elementwise.softmax_cross_entropy(x, labels, 1, 1.0, 0.5)
    truth = np.eye(5)[labels].reshape(2, 5, 1, 1)
    np.testing.assert_allclose(both, (xent + ((truth - p) ** 2).sum()) / 2)
    np.testing.assert_allclose(dx_cost, 1.5 * dx)


def test_crop_flip_mirrors_the_whole_image():
    x = np.arange(2 * 1 * 4 * 6, dtype=np.float64).reshape(2, 1, 4, 6)
    out = elementwise.crop_train(x, 2, 3, 1, 2, True, 1.0, 0.0)
    np.testing.assert_array_equal(out, x[:, :, 1:3, ::-1][:, :, :, 2:5])  # Darknet: col = w - dw - j - 1


def test_the_checker_catches_a_wrong_backward(rng):
    """A planted bug (the transposed convolution without flipping the taps) must fail."""
    x = rng.standard_normal((1, 2, 6, 6))
    weights = rng.standard_normal((3, 2, 3, 3))
    r = rng.standard_normal(conv2d_im2col(x, weights, 1, 1, 1).shape)
    wrong = conv2d_backward_input(r, weights[:, :, ::-1, ::-1].copy(), (2, 6, 6), 1, 1, 1)
    with pytest.raises(AssertionError):
        assert_gradient(wrong, lambda: float((conv2d_im2col(x, weights, 1, 1, 1) * r).sum()), x, rng)
