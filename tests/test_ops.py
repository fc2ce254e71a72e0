"""Every fast backend's ops (cpu; cuda where there is a GPU) against kern/ref (float64) on
fresh random, awkward shapes; and the CPU kernels called directly.

Tolerance: 1e-5 of the largest reference value (float32 sums of up to ~5000 products); 4e-5
where the CPU runs Winograd F(2x2, 3x3) (its transforms add rounding: up to 1.4e-5 measured
after a logistic, whose outputs are 40x smaller than the sums it squashes).
"""

import numba
import numpy as np
import pytest

from kern import get_backend
from kern.cpu import conv as cpu_conv
from kern.cpu import grouped as cpu_grouped
from kern.cpu import winograd as cpu_winograd
from kern.cpu import winograd_plain as cpu_winograd_plain
from kern.cpu.gemm import TILE_M, conv_gemm, conv_gemm16, pack_panels
from kern.errors import KernError
from kern.params import ACTIVATIONS, BatchNorm
from kern.ref import conv2d_im2col, conv2d_loops
from kern.ref.elementwise import activate as ref_activate
from tests.conftest import assert_close

# (batch, channels, height, width, filters, size, stride, padding, groups)
CONV_SHAPES = [
    (1, 3, 17, 13, 5, 3, 1, 1, 1),
    (3, 6, 15, 11, 10, 3, 2, 1, 2),
    (2, 7, 9, 9, 13, 1, 1, 0, 1),
    (1, 5, 19, 21, 7, 5, 2, 2, 1),
    (2, 3, 23, 23, 6, 7, 2, 3, 3),
    (1, 3, 31, 29, 8, 11, 4, 0, 1),
    (2, 64, 9, 7, 64, 3, 1, 1, 32),
    (1, 64, 8, 8, 128, 3, 2, 1, 32),
    (3, 33, 5, 6, 17, 2, 1, 0, 1),
    (2, 24, 9, 11, 24, 3, 2, 1, 3),  # 8 channels per group, stride 2: 3 groups merged into 1
    (1, 12, 7, 6, 12, 3, 1, 1, 12),  # depthwise (1 channel per group): 12 groups merged
    (1, 20, 6, 5, 40, 3, 1, 1, 4),  # grouped, more filters than channels per group: GEMM
    (2, 16, 13, 11, 40, 3, 1, 1, 1),  # >= 16 filters per group: CUDA's implicit GEMM
    (1, 32, 9, 9, 64, 3, 2, 1, 2),  # the same, grouped and strided
    (2, 128, 9, 7, 128, 3, 1, 1, 32),  # ResNeXt's 4 per group: groups in the CPU's vector lanes
    (3, 64, 7, 10, 96, 3, 2, 1, 8),  # 8 channels, 12 filters per group (3 quads), stride 2
    (1, 128, 11, 10, 256, 3, 2, 1, 16),  # 8 channels, 16 filters per group, 2 blocks of 8
    (2, 32, 6, 9, 32, 5, 1, 2, 8),  # 4 per group, 5x5
    (1, 64, 5, 6, 64, 1, 1, 0, 16),  # 4 per group, 1x1
    (1, 24, 13, 12, 70, 3, 1, 1, 1),  # >= 64 filters, >= 128 pixels: CUDA's 128 x 128 GEMM, float4 weights
    (2, 5, 17, 15, 130, 3, 1, 1, 1),  # the same, 45 taps (no float4), two row tiles
    (1, 32, 12, 12, 128, 1, 1, 0, 2),  # the same, grouped 1x1
    (1, 70, 7, 7, 100, 3, 1, 1, 1),  # < 128 pixels: CUDA's split-K GEMM, 630 taps over 8 warps
    (2, 300, 1, 1, 50, 1, 1, 0, 1),  # a connected layer at batch 2: split-K, 300 taps
    (2, 64, 9, 7, 72, 3, 1, 1, 1),  # 64+ channels, 3x3 stride 1: the CPU's Winograd, odd sizes
    (1, 96, 6, 8, 40, 3, 1, 1, 1),  # the same, even sizes, filters not whole panels of 16
    (2, 37, 11, 9, 37, 3, 2, 1, 37),  # depthwise (the CPU's own kernel): stride 2, odd channels
    (1, 19, 8, 10, 19, 5, 1, 2, 19),  # depthwise 5x5
    (3, 16, 7, 7, 16, 2, 2, 0, 16),  # depthwise 2x2 stride 2, no padding: Caffe's AVE pooling
]


def tolerance(shape: tuple) -> float:
    _, channels, _, _, _, size, stride, padding, groups = shape
    return 4e-5 if cpu_winograd_plain.fits(size, stride, padding, groups, channels) else 1e-5


def random_conv(rng, shape, activation="leaky", with_bn=True):
    n, c, h, w, f, k, stride, padding, groups = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weights = rng.standard_normal((f, c // groups, k, k)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    bn = None
    if with_bn:
        bn = BatchNorm(
            rng.uniform(0.5, 2, f).astype(np.float32),
            rng.standard_normal(f).astype(np.float32),
            rng.uniform(0.1, 2, f).astype(np.float32),
        )
    options = dict(stride=stride, padding=padding, groups=groups, activation=activation)
    return x, weights, bias, bn, options


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_ref_im2col_matches_loops(rng, shape):
    x, weights, _, _, o = random_conv(rng, shape)
    x64, w64 = x.astype(np.float64), weights.astype(np.float64)
    expected = conv2d_loops(x64, w64, o["stride"], o["padding"], o["groups"])
    assert_close(conv2d_im2col(x64, w64, o["stride"], o["padding"], o["groups"]), expected, 1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_matches_ref(rng, fast, ref64, shape, activation):
    x, weights, bias, bn, options = random_conv(rng, shape, activation)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **options))
    got = fast.to_numpy(fast.conv2d(fast.asarray(x), fast.prepare_conv(weights, bias, bn, **options)))
    if activation == "tanh":
        # Slope 1 at 0: the sums' absolute error passes through while the outputs shrink to
        # [-1, 1]; the bound is relative to the sums' (the linear outputs') largest.
        linear = dict(options, activation="linear")
        sums = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **linear))
        assert np.all(np.isfinite(got)) and got.shape == expected.shape
        assert np.abs(got - expected).max() <= tolerance(shape) * np.abs(sums).max()
        return
    assert_close(got, expected, tolerance(shape))


FUSED_SHAPES = [CONV_SHAPES[i] for i in (1, 2, 6, 0, 15, 12, 13, 19, 20, 22, 23, 24, 25, 26)]  # 12-23: CUDA's GEMMs


@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=str)
def test_conv_with_fused_residual_matches_ref(rng, fast, ref64, shape):
    x, weights, bias, bn, options = random_conv(rng, shape, "linear")
    expected_conv = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **options))
    residual = rng.standard_normal(expected_conv.shape).astype(np.float32)
    expected = ref64.activate(expected_conv + residual, "leaky")
    conv = fast.prepare_conv(weights, bias, bn, **options)
    got = fast.conv2d_residual(fast.asarray(x), conv, fast.asarray(residual), activation="leaky")
    assert_close(fast.to_numpy(got), expected, tolerance(shape))


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_cpu_direct_conv_matches_ref(rng, ref64, shape):
    x, weights, bias, _, o = random_conv(rng, shape, with_bn=False)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **o))
    got = cpu_conv.conv2d_direct(x, weights, bias, o["stride"], o["padding"], o["groups"], 1)
    assert_close(got, expected)


@pytest.mark.parametrize("kernel", [conv_gemm, conv_gemm16], ids=["8 lanes", "16 lanes"])
@pytest.mark.parametrize("pixels", [1, 7, 11, 13, 25, 200])
@pytest.mark.parametrize("activation", ["linear", "leaky", "logistic"])
@pytest.mark.parametrize("rows", [21, 40])
def test_gemm_writes_every_output_and_nothing_else(rng, kernel, pixels, activation, rows):
    # conv_gemm (6 x 16 tile) and conv_gemm16 (6 x 32: two panels; an odd last panel alone) as a
    # plain GEMM: a 1x1 convolution of a 1 x pixels image. Rows (2 and 3 panels per group) and
    # pixels not multiples of the tiles; 200 pixels > WHOLE_COLUMN_PIXELS
    groups, depth = 2, 37
    a = rng.standard_normal((groups, rows, depth)).astype(np.float32)
    b = rng.standard_normal((pixels, groups * depth)).astype(np.float32)
    bias = rng.standard_normal(groups * rows).astype(np.float32)
    size, margin = pixels * groups * rows, 17
    buffer = np.full(size + 2 * margin, np.nan, np.float32)  # poisoned, with margins either side
    out = buffer[margin : margin + size].reshape(1, 1, pixels, groups * rows)
    act = ACTIVATIONS.index(activation)
    kernel(b.reshape(1, 1, pixels, -1), pack_panels(a), bias, act, 1, 1, out, 1, 0, out, -1)
    b64 = b.astype(np.float64).reshape(pixels, groups, depth)
    linear = np.einsum("gmk,pgk->pgm", a.astype(np.float64), b64).reshape(pixels, groups * rows) + bias
    expected = ref_activate(linear, activation)
    assert_close(out[0, 0], expected)
    assert np.isnan(buffer[:margin]).all() and np.isnan(buffer[-margin:]).all()


@pytest.mark.parametrize("shape,padding", [((2, 7, 5, 3), 1), ((1, 3, 4, 9), 2), ((3, 40, 41, 64), 1)])
def test_padding_puts_the_images_inside_a_zero_border(rng, shape, padding):
    """The NumPy copy (small) and the parallel pass (the last shape: over 1 MB) alike, into
    NaN-poisoned memory."""
    x = rng.standard_normal(shape, dtype=np.float32)
    expected = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    assert np.array_equal(cpu_conv.pad(x, padding), expected)
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    cpu_conv.pad_images(x, padding, out)
    assert np.array_equal(out, expected)


def test_pack_panels_puts_16_filters_side_by_side(rng):
    weights = rng.standard_normal((3, 20, 5)).astype(np.float32)
    panels = pack_panels(weights)
    assert panels.shape == (3, 2, 5, TILE_M) and panels.flags.c_contiguous
    assert (panels[1, 1, 4, :4] == weights[1, 16:20, 4]).all() and not panels[:, 1, :, 4:].any()


@pytest.mark.parametrize(
    "shape,size,stride,padding",
    [
        ((2, 3, 8, 8), 2, 2, None),
        ((1, 4, 9, 7), 2, 2, None),
        ((3, 2, 11, 13), 3, 2, None),
        ((1, 5, 13, 13), 2, 1, None),
        ((2, 3, 27, 27), 3, 2, 0),
        ((1, 2, 10, 9), 3, 1, 2),
        ((1, 3, 6, 7), 5, 3, 3),
    ],
    ids=str,
)
def test_maxpool_matches_ref(rng, fast, ref64, shape, size, stride, padding):
    padding = size - 1 if padding is None else padding
    x = rng.standard_normal(shape).astype(np.float32)
    expected = ref64.maxpool(ref64.asarray(x), size=size, stride=stride, padding=padding)
    got = fast.to_numpy(fast.maxpool(fast.asarray(x), size=size, stride=stride, padding=padding))
    assert_close(got, expected, 0)


def test_maxpool_window_wholly_in_the_padding_gives_minus_flt_max(rng, fast, ref64):
    # size 1, padding 4: the window of output 0 and 1 starts at -2 and -1, outside the image.
    # Darknet gives -FLT_MAX there (finite), not -inf (which made the next conv NaN).
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    expected = ref64.maxpool(ref64.asarray(x), size=1, stride=1, padding=4)
    got = fast.to_numpy(fast.maxpool(fast.asarray(x), size=1, stride=1, padding=4))
    assert_close(got, expected, 0)
    lowest = np.finfo(np.float32).min
    assert (got[:, :, :2] == lowest).all() and (got[:, :, :, :2] == lowest).all()
    assert np.array_equal(got[:, :, 2:7, 2:6], x)


@pytest.mark.parametrize("shape", [(1, 5, 7, 9), (3, 1000, 14, 14), (2, 37, 3, 5), (2, 3, 1, 1)], ids=str)
def test_avgpool_matches_ref(rng, fast, ref64, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    assert_close(fast.to_numpy(fast.avgpool(fast.asarray(x))), ref64.avgpool(ref64.asarray(x)), 1e-6)


@pytest.mark.parametrize("shape", [(3, 60, 1, 1), (2, 4, 3, 5)], ids=str)
@pytest.mark.parametrize("groups,temperature", [(1, 1.0), (4, 1.0), (3, 0.5), (1, 2.5)])
def test_softmax_matches_ref(rng, fast, ref64, shape, groups, temperature):
    x = (5 * rng.standard_normal(shape)).astype(np.float32)
    expected = ref64.softmax(ref64.asarray(x), groups=groups, temperature=temperature)
    got = fast.to_numpy(fast.softmax(fast.asarray(x), groups=groups, temperature=temperature))
    assert_close(got, expected, 1e-6)
    assert np.allclose(got.reshape(shape[0], groups, -1).sum(axis=2), 1, atol=1e-6)


@pytest.mark.parametrize(
    "x_shape,source_shape",
    [
        ((2, 8, 9, 9), (2, 8, 9, 9)),  # same shape
        ((2, 8, 5, 5), (2, 6, 10, 10)),  # source larger: sampled with stride 2
        ((1, 6, 10, 10), (1, 8, 5, 5)),  # source smaller: spread with sample 2
        ((1, 5, 7, 7), (1, 9, 7, 7)),  # channels differ only
    ],
    ids=str,
)
@pytest.mark.parametrize("activation", ["linear", "leaky"])
def test_shortcut_matches_ref(rng, fast, ref64, x_shape, source_shape, activation):
    x = rng.standard_normal(x_shape).astype(np.float32)
    source = rng.standard_normal(source_shape).astype(np.float32)
    options = dict(alpha=0.5, beta=1.5, activation=activation)
    expected = ref64.shortcut(ref64.asarray(x), ref64.asarray(source), **options)
    got = fast.to_numpy(fast.shortcut(fast.asarray(x), fast.asarray(source), **options))
    assert_close(got, expected, 1e-6)


@pytest.mark.parametrize("channels", [(2, 5, 1), (7,), (16, 32), (3, 1, 4, 1), (13, 37, 8)], ids=str)
def test_route_matches_ref(rng, fast, ref64, channels):
    xs = [rng.standard_normal((3, c, 5, 7)).astype(np.float32) for c in channels]
    got = fast.to_numpy(fast.route([fast.asarray(x) for x in xs]))
    assert_close(got, ref64.route([ref64.asarray(x) for x in xs]), 0)


def test_cpu_route_writes_every_channel_and_refuses_unlike_maps(rng):
    """Vectors of 8 and a tail per input (13 + 37 + 8 channels), into a NaN-poisoned out."""
    cpu = get_backend("cpu")
    xs = [rng.standard_normal((2, 5, 3, c)).astype(np.float32) for c in (13, 37, 8)]
    out = np.full((2, 5, 3, 58), np.nan, dtype=np.float32)
    assert np.array_equal(cpu.route(xs, out=out), np.concatenate(xs, axis=3))
    with pytest.raises(ValueError, match=r"route: inputs .* differ in batch, height or width"):
        cpu.route([xs[0], xs[1][:, :4]])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch,inputs,outputs,bn", [(1, 74, 10, False), (3, 50, 9, True)])
def test_connected_matches_ref(rng, fast, ref64, activation, batch, inputs, outputs, bn):
    x = rng.standard_normal((batch, inputs // 2, 2, 1)).astype(np.float32)  # flattened C, H, W
    inputs = x[0].size
    weights = rng.standard_normal((outputs, inputs)).astype(np.float32)
    bias = rng.standard_normal(outputs).astype(np.float32)
    norm = None
    if bn:
        norm = BatchNorm(*(rng.uniform(0.5, 1.5, outputs).astype(np.float32) for _ in range(3)))
    expected = ref64.connected(
        ref64.asarray(x), ref64.prepare_connected(weights, bias, norm, activation=activation)
    )
    got = fast.to_numpy(fast.connected(fast.asarray(x), fast.prepare_connected(weights, bias, norm, activation=activation)))
    assert_close(got, expected)


def test_crop_and_activate_match_ref(rng, fast, ref64):
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    options = dict(height=7, width=5, scale=2.0, shift=-1.0)
    got = fast.to_numpy(fast.crop(fast.asarray(x), **options))
    assert_close(got, ref64.crop(ref64.asarray(x), **options), 1e-7)
    for activation in ACTIVATIONS:
        got = fast.to_numpy(fast.activate(fast.asarray(x), activation))
        assert_close(got, ref64.activate(ref64.asarray(x), activation), 1e-6)


def test_narrow_groups_are_merged_into_whole_panels(rng, ref64):
    assert [cpu_conv.merged_groups(32, f) for f in (4, 8, 16, 32)] == [4, 2, 1, 1]
    assert cpu_conv.merged_groups(3, 5) == 3 and cpu_conv.merged_groups(3, 8) == 1
    x, weights, bias, _, options = random_conv(rng, (1, 64, 7, 6, 64, 3, 1, 1, 16), "linear", with_bn=False)
    packed = cpu_conv.pack_weights(weights, 16)
    assert packed.shape == (4, 1, 3 * 3 * 16, 16)  # 4 merged groups of 4, 16 channels each
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    got = cpu_conv.conv2d_gemm(x.transpose(0, 2, 3, 1).copy(), packed, bias, 64, 3, 1, 1, 0)
    assert_close(got.transpose(0, 3, 1, 2), expected)


def test_groups_in_lanes_write_every_output_once(rng, ref64):
    """The lane kernel straight, on a NaN-poisoned output with a margin on each side, with
    bands of 1, 2 and 8 rows and 1 or 2 blocks per job (chosen by thread count and sizes:
    the choice must not change a bit)."""
    shape = (2, 128, 7, 5, 192, 3, 2, 1, 16)  # 8 channels, 12 filters per group, stride 2, 2 blocks
    x, weights, bias, _, options = random_conv(rng, shape, "leaky", with_bn=False)
    assert cpu_grouped.lane_groups_fit(16, 8, 12) and not cpu_grouped.lane_groups_fit(32, 2, 4)
    packed, lane_bias = cpu_grouped.pack_lane_weights(weights, bias, 16)
    assert packed.shape == (2, 3, 3 * 3 * 8, 4, 8) and lane_bias.shape == (2, 12, 8)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    nhwc = x.transpose(0, 2, 3, 1).copy()
    results = []
    for band_rows, span in ((1, 1), (2, 2), (8, 2)):
        poisoned = np.full(2 * 4 * 3 * 192 + 64, np.nan, np.float32)
        out = poisoned[32:-32].reshape(2, 4, 3, 192)
        cpu_grouped.conv_lane_groups(nhwc, packed, lane_bias, 1, 3, 2, 1, False, False, band_rows, span, out)
        assert np.isnan(poisoned[:32]).all() and np.isnan(poisoned[-32:]).all()
        assert_close(out.transpose(0, 3, 1, 2), expected)
        results.append(out.copy())
    # The same from an input already padded, in lane order and split by block (as a linked
    # 1x1 conv writes it).
    order = cpu_grouped.lane_order(128, 2)
    assert sorted(order) == list(range(128)) and order[1] == 8  # group 1's channel 0 is next
    ready = np.pad(nhwc, ((0, 0), (1, 1), (1, 1), (0, 0)))[..., order]  # (2, 9, 7, 128)
    ready = ready.reshape(2, 9, 7, 2, 64).transpose(0, 3, 1, 2, 4).copy().reshape(4, 9, 7, 64)  # per block
    out = np.full((2, 4, 3, 192), np.nan, np.float32)
    cpu_grouped.conv_lane_groups(ready, packed, lane_bias, 1, 3, 2, 1, True, False, 2, 2, out)
    results.append(out)
    # And written in lane order (as for a linked conv after it): the same values, moved.
    out_order = cpu_grouped.lane_order(192, 2)
    assert out_order[1] == 12  # group 1's filter 0 is next
    for interleaved, source in ((False, nhwc), (True, ready)):
        out = np.full((2, 4, 3, 192), np.nan, np.float32)
        cpu_grouped.conv_lane_groups(source, packed, lane_bias, 1, 3, 2, 1, interleaved, True, 2, 1, out)
        results.append(out[..., np.argsort(out_order)])
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("activation", ["leaky", "relu", "logistic"])
def test_winograd_on_linked_input_matches_ref(rng, ref64, activation):
    """F(2x2, 3x3) in the lanes, from input as a linked conv writes it (padded, lane order, a
    plane per block), on a NaN-poisoned output: 16 channels x 12 filters per group, 2 blocks,
    batch 2, 6 x 10 pixels (3 x 5 tiles: a band of 4 rows and one of 2)."""
    shape = (2, 256, 6, 10, 192, 3, 1, 1, 16)
    x, weights, bias, _, options = random_conv(rng, shape, activation, with_bn=False)
    assert cpu_winograd.winograd_fits(3, 1, 1, 16) and not cpu_winograd.winograd_fits(3, 2, 1, 16)
    packed, lane_bias = cpu_grouped.pack_lane_weights(weights, bias, 16)
    assert np.array_equal(cpu_grouped.unpack_lane_weights(packed, 3), weights)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    order = cpu_grouped.lane_order(256, 2)
    ready = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))[..., order]
    ready = ready.reshape(2, 8, 12, 2, 128).transpose(0, 3, 1, 2, 4).copy().reshape(4, 8, 12, 128)
    poisoned = np.full(2 * 6 * 10 * 192 + 64, np.nan, np.float32)
    out = poisoned[32:-32].reshape(2, 6, 10, 192)
    code = ACTIVATIONS.index(activation)
    u = cpu_winograd.pack_winograd_weights(weights, 16)
    cpu_winograd.conv_lane_winograd(ready, u, lane_bias, code, False, 4, out)
    assert np.isnan(poisoned[:32]).all() and np.isnan(poisoned[-32:]).all()
    assert_close(out.transpose(0, 3, 1, 2), expected)
    in_lanes = np.full((2, 6, 10, 192), np.nan, np.float32)  # written in lane order: the same, moved
    cpu_winograd.conv_lane_winograd(ready, u, lane_bias, code, True, 4, in_lanes)
    assert np.array_equal(in_lanes[..., np.argsort(cpu_grouped.lane_order(192, 2))], out)


def test_permuted_channels_read_a_permuted_input(rng):
    """conv.permute_channels (weights of a conv linked after a grouped one, which writes its
    channels in lane order): on a 3x3, stride-2, padded conv, the permuted weights on the
    permuted input give what the plain ones give on the plain input, up to rounding (the
    channels are summed in another order)."""
    x, weights, bias, _, _ = random_conv(rng, (2, 64, 7, 5, 24, 3, 2, 1, 1), "leaky", with_bn=False)
    nhwc = x.transpose(0, 2, 3, 1).copy()
    order = cpu_grouped.lane_order(64, 2)
    packed = cpu_conv.pack_weights(weights, 1)
    plain = cpu_conv.conv2d_gemm(nhwc, packed, bias, 24, 3, 2, 1, 1)
    permuted = cpu_conv.permute_channels(packed, 3, order)
    got = cpu_conv.conv2d_gemm(np.ascontiguousarray(nhwc[..., order]), permuted, bias, 24, 3, 2, 1, 1)
    assert_close(got, plain, 1e-6)


@pytest.mark.parametrize("size,stride,padding", [(3, 1, -1), (0, 1, 0), (2, 0, 0)])
def test_cpu_refuses_windows_its_kernels_cannot_index(cpu, size, stride, padding):
    # Numba does no bounds checks: a negative padding wrote before a buffer (issue 13).
    weights = np.ones((8, 3, max(size, 1), max(size, 1)), dtype=np.float32)
    with pytest.raises(KernError, match="expected 1, 1 and 0 or more"):
        cpu.prepare_conv(weights[..., :size, :size] if size else weights[..., :0, :0], np.zeros(8, np.float32),
                         None, stride=stride, padding=padding, groups=1, activation="linear")
    with pytest.raises(KernError, match="expected 1, 1 and 0 or more"):
        cpu.maxpool(cpu.asarray(np.ones((1, 3, 4, 4), np.float32)), size=size, stride=stride, padding=padding)


def test_winograd_jobs_split_over_panels_give_the_same_bits(rng, ref64):
    """The plain Winograd kernel splits a small map's work over runs of U's panels as well as
    over tiles: every split (a last run short, runs of one panel) writes every output, each to
    the same bits, on a NaN-poisoned output (5 x 7 pixels, 80 filters: 5 panels)."""
    x, weights, bias, _, options = random_conv(rng, (2, 64, 5, 7, 80, 3, 1, 1, 1), "leaky", with_bn=False)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    u = cpu_winograd_plain.pack_weights(weights)
    padded = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (1, 2), (1, 2), (0, 0)))
    scratch = np.empty((numba.config.NUMBA_NUM_THREADS, 16 * (16 * 64 + 16) + 16 * 16 * 16), np.float32)
    results = []
    for groups in (1, 2, 3, 5):
        out = np.full((2, 5, 7, 80), np.nan, np.float32)
        cpu_winograd_plain.conv_winograd(padded, u, bias, 1, out, 0, out, -1, 16, groups, scratch)
        results.append(out)
    assert_close(results[0].transpose(0, 3, 1, 2), expected, 4e-5)
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("kernel", ["conv2d_implicit_gemm_splitk", "conv2d_implicit_gemm_128"])
def test_cudasim_gemms_read_channels_past_32767(rng, cudasim, ref64, kernel):
    """The tap table of the 128 GEMM and split-K once packed a channel in 16 bits of an int32:
    channel 32,768 and above wrapped to negative rows (a connected layer of 50,176 inputs read
    the wrong ones). 40,000 input channels, 1x1, on a NaN-poisoned output."""
    x = rng.standard_normal((1, 40000, 1, 1)).astype(np.float32)
    weights = (rng.standard_normal((64, 40000, 1, 1)) * 0.01).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    options = dict(stride=1, padding=0, groups=1, activation="linear")
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    out = cudasim.asarray(np.full((1, 64, 1, 1), np.nan, np.float32))
    conv = cudasim.prepare_conv(weights, bias, None, **options)
    got = cudasim.conv2d(cudasim.asarray(x), conv, out=out, kernel=kernel)
    assert_close(cudasim.to_numpy(got), expected)


def test_cudasim_layers_past_the_tap_table_run_on_the_table_free_gemm(rng, cudasim, ref64, monkeypatch):
    """Where a layer's taps do not fit the table (2^19 channels per group or more: here the
    limit lowered to 16), the backend chooses the 64 x 64 GEMM, which needs none, and a kernel
    asked for by name is refused in one line."""
    import sys

    monkeypatch.setattr(sys.modules["kern.cudasim._cuda_backend"], "TAP_CHANNELS", 16)  # cudasim's backend.py
    x, weights, bias, _, options = random_conv(rng, (2, 24, 13, 12, 70, 3, 1, 1, 1), "leaky", with_bn=False)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    conv = cudasim.prepare_conv(weights, bias, None, **options)
    assert conv.tap_table is None
    assert_close(cudasim.to_numpy(cudasim.conv2d(cudasim.asarray(x), conv)), expected)
    with pytest.raises(KernError, match="conv2d_implicit_gemm_128: 24 channels a group or 3x3 taps: no tap table"):
        cudasim.conv2d(cudasim.asarray(x), conv, kernel="conv2d_implicit_gemm_128")


# Caffe's non-square kernels: (N, C, H, W, F, (KH, KW), stride, (PH, PW), groups).
NON_SQUARE_SHAPES = [
    (2, 5, 9, 11, 7, (1, 7), 1, (0, 3), 1),  # Inception's 1x7, "same" padding
    (1, 8, 10, 8, 12, (7, 1), 1, (3, 0), 1),  # and 7x1
    (2, 6, 9, 9, 10, (3, 1), 2, (1, 0), 2),  # strided, grouped
    (1, 24, 7, 6, 40, (1, 3), 1, (0, 1), 1),  # 42 pixels: CUDA's split-K GEMM
]


def random_non_square(rng, shape):
    n, c, h, w, f, kernel, stride, padding, groups = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weights = rng.standard_normal((f, c // groups, *kernel)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    return x, weights, bias, dict(stride=stride, padding=padding, groups=groups, activation="leaky")


@pytest.mark.parametrize("shape", NON_SQUARE_SHAPES, ids=str)
def test_non_square_conv_matches_ref(rng, fast, ref64, shape):
    x, weights, bias, options = random_non_square(rng, shape)
    x64, w64 = x.astype(np.float64), weights.astype(np.float64)
    loops = conv2d_loops(x64, w64, options["stride"], options["padding"], options["groups"])
    assert_close(conv2d_im2col(x64, w64, options["stride"], options["padding"], options["groups"]), loops, 1e-12)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    prepared = fast.prepare_conv(weights, bias, None, **options)
    assert_close(fast.to_numpy(fast.conv2d(fast.asarray(x), prepared)), expected, 1e-5)
    residual = rng.standard_normal(expected.shape).astype(np.float32)
    fused = fast.conv2d_residual(fast.asarray(x), prepared, fast.asarray(residual), activation="relu")
    assert_close(fast.to_numpy(fused), np.maximum(expected + residual, 0), 1e-5)


@pytest.mark.parametrize("kernel", ["conv2d_direct", "conv2d_implicit_gemm", "conv2d_implicit_gemm_128",
                                    "conv2d_implicit_gemm_splitk"])
@pytest.mark.parametrize("shape", [*NON_SQUARE_SHAPES, (1, 4, 6, 6, 3, (1, 3), 1, (0, 0), 1)], ids=str)
def test_cudasim_runs_non_square_kernels_as_they_are(rng, cudasim, ref64, kernel, shape):
    """conv.cu's four kernels take KH x KW and (pad_h, pad_w) (no square kernel with zeros
    around the taps: a 1x3 without padding has no such equivalent), each asked for by name,
    into a poisoned output."""
    x, weights, bias, options = random_non_square(rng, shape)
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, None, **options))
    conv = cudasim.prepare_conv(weights, bias, None, **options)
    assert tuple(conv.weights.shape[2:]) == shape[5]
    out = cudasim.asarray(np.full(expected.shape, np.nan, np.float32))
    got = cudasim.conv2d(cudasim.asarray(x), conv, out=out, kernel=kernel)
    assert_close(cudasim.to_numpy(got), expected)
