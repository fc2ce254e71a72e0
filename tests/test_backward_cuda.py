"""The CUDA training ops (kern/cuda/training.py, kern/cuda/train.cu) against the float64
reference ops (kern/ref/training.py) on awkward shapes: odd sizes, stride 2 and 3, padding,
groups, batch > 1. They run on cudasim here (and on a GPU where there is one): every new
device array starts NaN-poisoned, so an unwritten element fails, and every launch runs twice,
its threads in forward and in reverse order, which must give the same bytes (no races).

Tolerance: |cuda - ref| <= 2e-5 * max|ref|, as for the CPU ops (float32 sums of up to a few
thousand terms); 1e-4 where a leaky kink may flip at y ~ 0 (batchnorm's backward)."""

import numpy as np
import pytest

from kern.errors import KernError
from kern.ref.training import RefTraining
from tests.conftest import assert_close
from tests.test_backward_cpu import ACTIVATIONS, CONV_CASES

RTOL = 2e-5


@pytest.fixture(scope="module", params=[pytest.param("cudasim", marks=pytest.mark.cudasim), "cuda"])
def ops(request):
    from kern.backend import get_training_backend

    try:
        return get_training_backend(request.param)
    except KernError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def ref():
    return RefTraining(np.float64)


def close(ops, got, expected, rtol=RTOL):
    assert_close(ops.to_numpy(got), expected, rtol)


def f32(x):
    """A float64 input as the float32 values the device gets (so both sides start equal)."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


@pytest.mark.parametrize("n, c, h, w, f, k, stride, padding, groups", CONV_CASES[:9])
def test_conv_forward_and_both_gradients(ops, ref, rng, n, c, h, w, f, k, stride, padding, groups):
    x = f32(rng.standard_normal((n, c, h, w)))
    weights = rng.standard_normal((f, c // groups, k, k)).astype(np.float32)
    w64, bias = weights.astype(np.float64), rng.standard_normal(f).astype(np.float32)
    options = dict(stride=stride, padding=padding, groups=groups)
    prepared = ops.conv_weights(ops.parameter(weights), groups)
    z = ref.conv2d(x, w64, **options)
    close(ops, ops.conv2d(ops.asarray(x), prepared, **options), z)
    y = ref.conv2d(x, w64, bias=bias.astype(np.float64), activation="leaky", **options)
    got = ops.conv2d(ops.asarray(x), prepared, bias=ops.parameter(bias), activation="leaky", **options)
    close(ops, got, y)

    dz = f32(rng.standard_normal(z.shape))
    dx = ref.conv2d_backward_input(dz, w64, in_shape=(c, h, w), **options)
    close(ops, ops.conv2d_backward_input(ops.asarray(dz), prepared, in_shape=(c, h, w), **options), dx)
    earlier = f32(rng.standard_normal((n, c, h, w)))  # a gradient holding another layer's share
    into = ops.asarray(earlier)
    got = ops.conv2d_backward_input(ops.asarray(dz), prepared, in_shape=(c, h, w), into=into, **options)
    close(ops, got, dx + earlier)

    dw = np.zeros(weights.shape)
    ref.conv2d_backward_weights(x, dz, ksize=k, into=dw, **options)
    start = rng.standard_normal(weights.shape).astype(np.float32)  # the update buffer's momentum
    into = ops.parameter(start)
    ops.conv2d_backward_weights(ops.asarray(x), ops.asarray(dz), ksize=k, into=into, **options)
    assert_close(ops.host(into) - start, dw, RTOL)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 70, 3, 5), (4, 10, 1, 1), (1, 16, 33, 31)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_batchnorm_forward_and_backward(ops, ref, rng, shape, activation):
    channels = shape[1]
    z = f32(rng.standard_normal(shape) * 3 + 1)
    scales, biases = f32(rng.uniform(0.5, 1.5, channels)), f32(rng.standard_normal(channels))
    rolling = [f32(rng.uniform(0.5, 2, channels)) for _ in range(2)]
    y, mean, variance = ref.batchnorm_forward(z, scales, biases, *[r.copy() for r in rolling], activation)
    device_rolling = [ops.parameter(r) for r in rolling]
    y32, mean32, variance32 = ops.batchnorm_forward(
        ops.asarray(z), ops.parameter(scales), ops.parameter(biases), *device_rolling, activation
    )
    close(ops, y32, y)
    close(ops, mean32, mean, 1e-6)
    close(ops, variance32, variance, 1e-6)
    expected_rolling = [0.99 * r + 0.01 * s for r, s in zip(rolling, (mean, variance))]
    for got, want in zip(device_rolling, expected_rolling):
        assert_close(ops.host(got), want, 1e-6)

    dy = f32(rng.standard_normal(shape))
    ds, db = np.zeros(channels), np.zeros(channels)
    dz = ref.batchnorm_backward(dy, y, z, mean, variance, scales, biases, activation, scales_into=ds, biases_into=db)
    ds32, db32 = ops.parameter(np.ones(channels)), ops.parameter(np.ones(channels))  # buffers holding momentum
    dz32 = ops.batchnorm_backward(ops.asarray(dy), y32, ops.asarray(z), mean32, variance32, ops.parameter(scales),
                                  ops.parameter(biases), activation, scales_into=ds32, biases_into=db32)
    close(ops, dz32, dz, 1e-4)  # d = dy * act'(y) from float32 y: a leaky kink may flip at y ~ 0
    assert_close(ops.host(ds32) - 1, ds, 1e-4)
    assert_close(ops.host(db32) - 1, db, 1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bias_activate_activation_backward_and_bias_gradient(ops, ref, rng, activation):
    z, bias = f32(rng.standard_normal((3, 4, 5, 7))), f32(rng.standard_normal(4))
    y = ref.bias_activate(z, bias, activation)
    y32 = ops.bias_activate(ops.asarray(z), ops.parameter(bias), activation)
    close(ops, y32, y)
    dy = f32(rng.standard_normal(y.shape))
    db = np.zeros(4)
    dz = ref.activation_backward(dy, f32(y), activation, biases_into=db)
    db32 = ops.parameter(np.full(4, 2.0))
    close(ops, ops.activation_backward(ops.asarray(dy), ops.asarray(y), activation, biases_into=db32), dz)
    assert_close(ops.host(db32) - 2, db, 1e-5)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, 1), (3, 1, 2), (3, 2, 2), (2, 1, 1), (5, 3, 4), (2, 2, 0)])
def test_maxpool_forward_and_backward(ops, ref, rng, size, stride, padding):
    x = f32(rng.standard_normal((2, 19, 7, 6)))
    x[0, 0, :2, :2] = 5.0  # ties: the first cell of the window wins
    options = dict(size=size, stride=stride, padding=padding)
    y, where = ref.maxpool_forward(x, **options)
    y32, winners = ops.maxpool_forward(ops.asarray(x), **options)
    np.testing.assert_array_equal(ops.to_numpy(y32), y)
    np.testing.assert_array_equal(ops.to_numpy(winners.where), where)
    dy = f32(rng.standard_normal(y.shape))
    dx = ref.maxpool_backward(dy, where, in_shape=x.shape[1:])
    close(ops, ops.maxpool_backward(ops.asarray(dy), winners, in_shape=x.shape[1:]), dx)
    earlier = f32(rng.standard_normal(x.shape))
    got = ops.maxpool_backward(ops.asarray(dy), winners, in_shape=x.shape[1:], into=ops.asarray(earlier))
    close(ops, got, dx + earlier)


def test_avgpool_forward_and_backward(ops, ref, rng):
    x = f32(rng.standard_normal((3, 21, 5, 7)))
    close(ops, ops.avgpool(ops.asarray(x)), ref.avgpool(x))
    dy = f32(rng.standard_normal((3, 21, 1, 1)))
    dx = ref.avgpool_backward(dy, in_shape=(21, 5, 7))
    close(ops, ops.avgpool_backward(ops.asarray(dy), in_shape=(21, 5, 7)), dx)
    got = ops.avgpool_backward(ops.asarray(dy), in_shape=(21, 5, 7), into=ops.asarray(x))
    close(ops, got, dx + x)


@pytest.mark.parametrize("batchnorm_input", [(4, 3, 5, 6), (3, 40, 1, 1)])
def test_connected_forward_and_gradients(ops, ref, rng, batchnorm_input):
    n, c, h, w = batchnorm_input
    x = f32(rng.standard_normal(batchnorm_input))
    weights = rng.standard_normal((11, c * h * w)).astype(np.float32)
    w64, device_weights = weights.astype(np.float64), ops.parameter(weights)
    close(ops, ops.connected(ops.asarray(x), device_weights), ref.connected(x, w64))
    dz = f32(rng.standard_normal((n, 11, 1, 1)))
    dx = ref.connected_backward_input(dz, w64, in_shape=(c, h, w))
    close(ops, ops.connected_backward_input(ops.asarray(dz), device_weights, in_shape=(c, h, w)), dx)
    got = ops.connected_backward_input(ops.asarray(dz), device_weights, in_shape=(c, h, w), into=ops.asarray(x))
    close(ops, got, dx + x)
    dw, dw32 = np.zeros(weights.shape), ops.zeros(weights.shape)
    ref.connected_backward_weights(x, dz, into=dw)
    ops.connected_backward_weights(ops.asarray(x), ops.asarray(dz), into=dw32)
    assert_close(ops.host(dw32), dw, RTOL)


@pytest.mark.parametrize("out_shape, source_shape", [
    ((2, 4, 6, 6), (2, 4, 6, 6)), ((2, 4, 6, 6), (2, 6, 12, 12)), ((2, 6, 6, 6), (2, 3, 3, 3)),
    ((1, 5, 7, 9), (1, 3, 7, 9)),
])
@pytest.mark.parametrize("activation", ["linear", "leaky", "logistic"])
def test_shortcut_forward_and_backward(ops, ref, rng, out_shape, source_shape, activation):
    x, source = f32(rng.standard_normal(out_shape)), f32(rng.standard_normal(source_shape))
    options = dict(alpha=0.7, beta=1.3, activation=activation)
    y = ref.shortcut(x, source, **options)
    close(ops, ops.shortcut(ops.asarray(x), ops.asarray(source), **options), y)
    dy = f32(rng.standard_normal(out_shape))
    y = f32(y)
    dx, dsource = ref.shortcut_backward(dy, y, source_shape=source_shape[1:], **options)
    dx32, dsource32 = ops.shortcut_backward(ops.asarray(dy), ops.asarray(y), source_shape=source_shape[1:], **options)
    close(ops, dx32, dx)
    close(ops, dsource32, dsource)


def test_route_dropout_crop_and_add(ops, ref, rng):
    parts = [f32(rng.standard_normal((2, c, 3, 4))) for c in (2, 4, 3)]
    close(ops, ops.route([ops.asarray(p) for p in parts]), ref.route(parts))
    dy = f32(rng.standard_normal((2, 9, 3, 4)))
    for got, want in zip(ops.route_backward(ops.asarray(dy), [2, 4, 3]), ref.route_backward(dy, [2, 4, 3])):
        close(ops, got, want)
    x = f32(rng.standard_normal((2, 5, 4, 3)))
    keep = rng.random(x.shape) >= 0.4
    mask, want = ops.dropout_mask(keep, 1 / 0.6), ref.dropout_mask(keep, 1 / 0.6)
    close(ops, ops.dropout(ops.asarray(x), mask), ref.dropout(x, want))
    close(ops, ops.dropout_backward(ops.asarray(x), mask), ref.dropout_backward(x, want))
    got = ops.dropout_backward(ops.asarray(x), mask, into=ops.asarray(x))
    close(ops, got, ref.dropout_backward(x, want) + x)
    for flip in (False, True):
        options = dict(height=3, width=2, top=1, left=1, flip=flip, scale=2.0, shift=-1.0)
        close(ops, ops.crop(ops.asarray(x), **options), ref.crop(x, **options))
    a, b = f32(rng.standard_normal((3, 4, 5, 6))), f32(rng.standard_normal((3, 4, 5, 6)))
    close(ops, ops.add(ops.asarray(a), ops.asarray(b)), a + b)


@pytest.mark.parametrize("cost_scale", [None, 0.5])
@pytest.mark.parametrize("shape, groups, temperature", [((5, 10, 1, 1), 1, 1.0), ((3, 1000, 1, 1), 1, 1.0),
                                                        ((4, 6, 1, 1), 2, 0.5)])
def test_softmax_cross_entropy(ops, ref, rng, cost_scale, shape, groups, temperature):
    x = f32(rng.standard_normal(shape) * 4)
    x[0, 0] = 100.0  # a large logit, the right one: exp must not overflow (e^88 does in float32)
    labels = rng.integers(0, shape[1], shape[0])
    labels[0] = 0
    options = dict(groups=groups, temperature=temperature, cost_scale=cost_scale)
    p, cost, dx = ref.softmax_cross_entropy(x, labels, **options)
    p32, cost32, dx32 = ops.softmax_cross_entropy(ops.asarray(x), labels, **options)
    close(ops, p32, p)
    close(ops, dx32, dx)
    assert abs(cost32 - cost) <= 1e-5 * abs(cost)


def test_sgd_update_is_darknets_float32_arithmetic(ops, rng):
    """Bit for bit what Darknet's C does in float32, no fused multiply-add: update +=
    decay*param (weights only); param -= rate*update; update *= momentum."""
    param, update = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    rate, momentum, decay = np.float32(0.1) / np.float32(128), np.float32(0.9), np.float32(0.0005) * np.float32(128)
    for d in (decay, np.float32(0)):
        expected_update = update + d * param
        expected_param = param - rate * expected_update
        expected_update = expected_update * momentum
        device_param, device_update = ops.parameter(param), ops.parameter(update)
        ops.sgd_update(device_param, device_update, rate=float(rate), momentum=float(momentum), decay=float(d))
        np.testing.assert_array_equal(ops.host(device_param), expected_param)
        np.testing.assert_array_equal(ops.host(device_update), expected_update)


def test_sums_repeat_bit_for_bit(ops, rng):
    """The weight gradient and the batchnorm sums, twice from the same inputs: the same bits
    (one order per sum, no atomics)."""
    x, dz = ops.asarray(rng.standard_normal((3, 6, 9, 8))), ops.asarray(rng.standard_normal((3, 10, 5, 4)))
    results = []
    for _ in range(2):
        dw = ops.zeros((10, 6, 3, 3))
        ops.conv2d_backward_weights(x, dz, ksize=3, stride=2, padding=1, groups=1, into=dw)
        rolling = [ops.zeros((10,)), ops.parameter(np.ones(10))]
        y, mean, variance = ops.batchnorm_forward(dz, ops.parameter(np.ones(10)), ops.zeros((10,)), *rolling, "leaky")
        sums = [ops.zeros((10,)), ops.zeros((10,))]
        dzz = ops.batchnorm_backward(dz, y, dz, mean, variance, ops.parameter(np.ones(10)), ops.zeros((10,)), "leaky",
                                     scales_into=sums[0], biases_into=sums[1])
        results.append([ops.to_numpy(a) for a in (dw, y, mean, variance, dzz, *sums, *rolling)])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# Planted bugs: train.cu with one mistake each; the test above that covers that kernel must fail
# on it, by a wrong or unwritten (NaN) output or by cudasim's report (a race, a bad access).
PLANTED = [  # (what, old text, new text, the test that must fail, its arguments)
    ("weight gradient: a missing barrier", "        __syncthreads();  // the next chunk", "        //",
     "conv", CONV_CASES[5]),
    ("weight gradient: the tile's last tap column unguarded", "&& first_tap + tap < taps)", ")",
     "conv", CONV_CASES[0]),
    ("input gradient: stride ignored", "ty % stride != 0 ||", "", "conv", CONV_CASES[1]),
    ("input gradient: groups ignored", "const int channels = c / groups, filters = f / groups, g = ci / channels",
     "const int channels = c / groups, filters = f / groups, g = 0 * ci", "conv", CONV_CASES[2]),
    ("batchnorm: the biased variance", "/ (float)(count - 1)", "/ (float)count", "batchnorm", ((3, 5, 7, 9), "leaky")),
    ("bias gradient overwrites the momentum", "if (threadIdx.x == 0) into[blockIdx.x] += sum;",
     "if (threadIdx.x == 0) into[blockIdx.x] = sum;", "activation", ("leaky",)),
    ("max pool: the last maximum wins", "if (in[yy * w + xx] > best)", "if (in[yy * w + xx] >= best)",
     "maxpool", (2, 2, 1)),
    ("max pool gradient: overlapping windows missed", "max(0, (ty - size + stride) / stride)",
     "max(0, ty / stride)", "maxpool", (3, 1, 2)),
    ("softmax: a missing barrier", "    __syncthreads();  // below, threads read p", "    //",
     "softmax", (None, (4, 6, 1, 1), 2, 0.5)),
    ("average pool gradient drops what it adds to", "dx[i] = accumulate ? into[i] + share : share;",
     "dx[i] = share;", "avgpool", ()),
]
CHECKS = {
    "conv": test_conv_forward_and_both_gradients, "batchnorm": test_batchnorm_forward_and_backward,
    "activation": test_bias_activate_activation_backward_and_bias_gradient,
    "maxpool": test_maxpool_forward_and_backward, "softmax": test_softmax_cross_entropy,
    "avgpool": test_avgpool_forward_and_backward,
}


@pytest.mark.cudasim
@pytest.mark.slow
@pytest.mark.parametrize("what, old, new, check, arguments", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_bugs_are_caught(ref, rng, what, old, new, check, arguments):
    cudasim = pytest.importorskip("kern.cudasim", reason="no C++ compiler for cudasim")
    from kern.cuda.sources import FOLDER, compile_options
    from kern.cudasim.device import CudasimError, RawModule

    code = (FOLDER / "train.cu").read_text()
    assert code.count(old) == 1, old
    ops = cudasim.CudasimTraining()
    ops._module = RawModule(code=code.replace(old, new), options=compile_options(), name="train.cu (planted)")
    with pytest.raises((AssertionError, CudasimError)):
        CHECKS[check](ops, ref, rng, *arguments)
