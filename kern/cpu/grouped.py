"""Convolution with narrow groups (ResNeXt's 4 to 32 filters per group): eight groups in the
eight lanes of a vector.

gemm.conv_gemm puts 16 filters of one group side by side in two vectors. A group of 4 filters
fills a quarter of that, and merging 4 such groups into one panel (conv.merged_groups) makes
three quarters of the multiply-adds multiply zeros. Here lane j of every vector belongs to
group j of a block of eight, and each group does its own small GEMM in its own lane:

    out[p, (8b + j)*F' + f] = sum_k band[b, p, k, j] * weights[b, f, k, j]    (j = 0..7)

with F' filters per group and k = (ky, kx, c) over the group's K*K*C' taps. Nothing is zero
and nothing crosses lanes in the loop.

One load must then give channel c of eight groups, which NHWC stores C' apart. So each job
first copies the rows of x it needs (a band) into a small buffer, zero-padded, with each
pixel's 8 x C' channels of a block transposed to C' x 8 (`interleave_band`: loads of 4
channels and a 4x4 transpose per 128-bit half, 8 shuffles). The buffer stays in the core's
L2 while the band is computed. The weights are packed alike at load time (`pack_lane_weights`).
Where the layer before is a convolution that nothing else reads, the backend links the two
(kern/cpu `link_convs`): that one's filters are put in this order at load time and it writes
one zero-padded image per block (conv2d_gemm's out_planes and out_padding), so that here the
band is x itself (`interleaved`) and nothing is copied. Linked 3x3 stride-1 layers with 16 or
more channels per group run Winograd's F(2x2, 3x3) on the same layout instead (winograd.py).

The micro-kernel is a tile of 3 pixels x 4 filters of each of the eight groups: 12
accumulators, 3 inputs and the weight vector being used, all 16 ymm registers. Per step of k
it loads 3 input vectors and 4 weight vectors and does 12 fused multiply-adds. The
accumulators start at the bias. Linear and leaky are applied to them as max(v, slope * v).
The sums come out with the groups across the lanes; the same transpose turns four vectors
into eight rows of 4 filters, one per group, stored where they belong in the NHWC output.
Where the next layer is a convolution that reads nothing else (ResNeXt's 1x1 after each
grouped conv), the backend links these two as well: that one's weights are permuted at load
time to read channels in lane order, and here the four vectors are stored as they are
(`lanes_out`: no transpose, whole-vector stores; 1-5% off ResNeXt's grouped layers).
Relu and the logistic run in place over a tile's outputs once its block's filters are all
summed, while they are still in L1.

Jobs are (blocks, image, band of output rows); each output is summed by one thread in a fixed
order, so results are identical for every thread count and every choice of band.
"""

import numba
import numpy as np
from numba import njit, prange

from kern.cpu.activation import LEAK, LEAKY, LINEAR, activate_vectors
from kern.cpu.simd import (
    aligned_empty,
    fma8,
    load8,
    load_halves,
    max8,
    mul8,
    output_array,
    shuffle8,
    splat8,
    store8,
    store_halves,
)
from kern.params import conv_output_size

LANES = 8  # groups per block: one per vector lane
TILE_P, TILE_F = 3, 4  # the register tile: pixels x filters per group (x 8 groups in the lanes)
BAND_BYTES = 384 * 1024  # input rows per job: 3/4 of a Zen 3 L2 (256 KB: slower at 64x64, 512: same)
MAX_BAND_ROWS = 8

# A 4x4 transpose in each 128-bit half of four vectors: unpack pairs, then pairs of pairs.
_unpack_low = shuffle8((0, 8, 1, 9, 4, 12, 5, 13))
_unpack_high = shuffle8((2, 10, 3, 11, 6, 14, 7, 15))
_pairs_low = shuffle8((0, 1, 8, 9, 4, 5, 12, 13))
_pairs_high = shuffle8((2, 3, 10, 11, 6, 7, 14, 15))


@njit(inline="always", cache=True)
def transpose_halves(r0, r1, r2, r3):
    """Lane h*4 + i of output c = lane h*4 + c of input i (h = 0, 1): eight shuffles."""
    t0, t1 = _unpack_low(r0, r1), _unpack_high(r0, r1)
    t2, t3 = _unpack_low(r2, r3), _unpack_high(r2, r3)
    return _pairs_low(t0, t2), _pairs_high(t0, t2), _pairs_low(t1, t3), _pairs_high(t1, t3)


def lane_groups_fit(groups: int, group_channels: int, per_group: int) -> bool:
    """Whether a layer suits this kernel: whole blocks of eight groups, channels and filters
    in fours (the transposes' width), and groups narrower than two of gemm's 16-filter panels
    (wider ones keep gemm's 6x16 tile, which reuses each input for 16 filters)."""
    whole = groups % LANES == 0 and group_channels % 4 == 0 and per_group % TILE_F == 0
    return whole and per_group <= 32


def pack_lane_weights(weights: np.ndarray, bias: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """OIHW weights, (F,) bias -> (G/8, F'/4, K*K*C', 4, 8) and (G/8, F', 8): lane j holds
    group 8b + j; per 4 filters, the taps in (ky, kx, c) order, the kernel's offset order."""
    filters, group_channels, ksize, _ = weights.shape
    blocks, per_group = groups // LANES, filters // groups
    # (block, lane, quad, filter, c, ky, kx) -> (block, quad, ky, kx, c, filter, lane)
    split = weights.reshape(blocks, LANES, per_group // TILE_F, TILE_F, group_channels, ksize, ksize)
    packed = split.transpose(0, 2, 5, 6, 4, 3, 1).reshape(blocks, per_group // TILE_F, -1, TILE_F, LANES)
    lane_bias = bias.reshape(blocks, LANES, per_group).transpose(0, 2, 1)
    aligned = aligned_empty(packed.size).reshape(packed.shape)
    aligned[...] = packed
    return aligned, np.ascontiguousarray(lane_bias)


def unpack_lane_weights(packed: np.ndarray, ksize: int) -> np.ndarray:
    """pack_lane_weights' inverse: (G/8, F'/4, K*K*C', 4, 8) -> OIHW weights."""
    blocks, quads, depth, _, _ = packed.shape
    split = packed.reshape(blocks, quads, ksize, ksize, depth // ksize**2, TILE_F, LANES)
    # (block, quad, ky, kx, c, filter, lane) -> (block, lane, quad, filter, c, ky, kx)
    return split.transpose(0, 6, 1, 5, 4, 2, 3).reshape(blocks * LANES * quads * TILE_F, -1, ksize, ksize)


@njit(cache=True)
def interleave_band(x, n, first_block, first_row, padding, band):
    """Rows first_row, first_row + 1, ... of image n, zero-padded, into band (blocks, rows,
    W + 2p, 8C'): band[i, r, px, 8c + j] = x[n, first_row + r, px - p, (8b + j)*C' + c] for
    b = first_block + i, 0 outside the image. Per pixel and block, the 8 x C' matrix of
    channels is transposed in registers, four channels at a time; x is read in order."""
    _, height, width, channels = x.shape
    blocks, rows, padded_w, depth8 = band.shape
    group_channels = depth8 // LANES
    flat, band_flat = x.reshape(-1), band.reshape(-1)
    row_size = padded_w * depth8
    for r in range(rows):
        iy = first_row + r
        inside = 0 <= iy < height
        for i in range(blocks):
            at = (i * rows + r) * row_size
            if inside:  # the left and right borders
                band_flat[at : at + padding * depth8] = 0.0
                band_flat[at + (padding + width) * depth8 : at + row_size] = 0.0
            else:
                band_flat[at : at + row_size] = 0.0
        if not inside:
            continue
        source = ((n * height + iy) * width * channels) + first_block * depth8  # group 8 * first_block
        for ix in range(width):
            for i in range(blocks):
                target = (i * rows + r) * row_size + (padding + ix) * depth8
                for _ in range(group_channels // 4):
                    # 4 channels: lanes 0..3 of group i (of 8), lanes 4..7 of group i + 4
                    u0 = load_halves(flat, source, source + 4 * group_channels)
                    u1 = load_halves(flat, source + group_channels, source + 5 * group_channels)
                    u2 = load_halves(flat, source + 2 * group_channels, source + 6 * group_channels)
                    u3 = load_halves(flat, source + 3 * group_channels, source + 7 * group_channels)
                    d0, d1, d2, d3 = transpose_halves(u0, u1, u2, u3)  # channel i of groups 0..7
                    store8(band_flat, target, d0)
                    store8(band_flat, target + LANES, d1)
                    store8(band_flat, target + 2 * LANES, d2)
                    store8(band_flat, target + 3 * LANES, d3)
                    source += 4
                    target += 4 * LANES
                source += depth8 - group_channels  # to the next block's group 0
            source += channels - blocks * depth8  # to the next pixel


@njit(inline="always", cache=True)
def fma_tile(x0, x1, x2, weights, w, acc):
    """One step of k of the 3x4 register tile: acc (12 accumulators, pixel-major) plus inputs
    x0..x2 (one per pixel) times the 4 filter vectors at weights[w : w + 32]. One weight vector
    is loaded at a time: 12 accumulators, 3 inputs and 1 weight fill the 16 ymm registers."""
    a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23 = acc
    v = load8(weights, w)
    a00, a10, a20 = fma8(x0, v, a00), fma8(x1, v, a10), fma8(x2, v, a20)
    v = load8(weights, w + 8)
    a01, a11, a21 = fma8(x0, v, a01), fma8(x1, v, a11), fma8(x2, v, a21)
    v = load8(weights, w + 16)
    a02, a12, a22 = fma8(x0, v, a02), fma8(x1, v, a12), fma8(x2, v, a22)
    v = load8(weights, w + 24)
    a03, a13, a23 = fma8(x0, v, a03), fma8(x1, v, a13), fma8(x2, v, a23)
    return a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23


@njit(inline="always", cache=True)
def store_tile_row(rows_at, pixel, f0, f1, f2, f3, slope, lanes_out):
    """Store four filters' vectors (lane j: group j), each as max(v, slope * v) (linear or
    leaky), in row = rows[pixel] for (rows, o, stride) = rows_at: as lane j's four values at
    row[o + j*stride : o + j*stride + 4] (the inverse of interleave's transpose), or with
    lanes_out as they are, at row[o : o + 32]."""
    rows, o, stride = rows_at
    row = rows[pixel]
    f0, f1 = max8(f0, mul8(f0, slope)), max8(f1, mul8(f1, slope))
    f2, f3 = max8(f2, mul8(f2, slope)), max8(f3, mul8(f3, slope))
    if lanes_out:
        store8(row, o, f0)
        store8(row, o + LANES, f1)
        store8(row, o + 2 * LANES, f2)
        store8(row, o + 3 * LANES, f3)
        return
    r0, r1, r2, r3 = transpose_halves(f0, f1, f2, f3)
    store_halves(row, o, o + 4 * stride, r0)  # groups 0 and 4
    store_halves(row, o + stride, o + 5 * stride, r1)
    store_halves(row, o + 2 * stride, o + 6 * stride, r2)
    store_halves(row, o + 3 * stride, o + 7 * stride, r3)


@njit(inline="always", cache=True)
def activate_columns(rows, first, count, o, width, act):
    """rows[first : first + count, o : o + width] = act(that), in place (width: whole vectors)."""
    for p in range(first, first + count):
        activate_vectors(rows[p], o, width, act)


@njit(parallel=True, cache=True)
def conv_lane_groups(
    x, weights, bias, act, ksize, stride, padding, interleaved, lanes_out, band_rows, span, out
):
    """x (N, H, W, C), or with `interleaved` (N * G/8, H + 2p, W + 2p, 8C'): each block of 8
    groups already an image of its own, zero-padded, channels in lane order (8c + j: see
    lane_order); weights, bias from pack_lane_weights; out (N, OH, OW, F), its channels in
    lane order too with `lanes_out` (lane_order(F, G/8)). Jobs are (`span` blocks of 8
    groups, image, band of band_rows output rows), blocks slowest."""
    _, x_h, x_w, _ = x.shape
    _, out_h, out_w, filters = out.shape
    blocks, quads, depth, _, _ = weights.shape
    n_images = out.shape[0]
    per_group = quads * TILE_F
    group_channels = depth // (ksize * ksize)
    depth8 = group_channels * LANES  # a block's channels: one pixel of a band
    padded_w = x_w if interleaved else x_w + 2 * padding
    weight_flat, bias_flat, x_flat = weights.reshape(-1), bias.reshape(-1), x.reshape(-1)
    # Where tap k = (ky, kx, c) of a block's eight groups lies relative to the pixel's start.
    offsets = np.empty(depth, dtype=np.int64)
    for k in range(depth):
        ky, kx, c = k // (ksize * group_channels), k // group_channels % ksize, k % group_channels
        offsets[k] = (ky * padded_w + kx) * depth8 + c * LANES
    # The order a band's output pixels are computed in, and where each starts reading. Row by
    # row, except with a stride: then down each column of the band first, so that consecutive
    # tiles read a few columns of the band's input rows, which stay in L1 (the 3 input rows
    # of a stride-2 layer's output row do not: measured 0.50 -> 0.43 ms on ResNeXt's 64x64x256,
    # and 0.30 -> 0.49 ms the other way on its 64x64x128 stride-1 layer).
    bands = (out_h + band_rows - 1) // band_rows
    last_rows = out_h - (bands - 1) * band_rows
    order = np.empty((2, band_rows * out_w), dtype=np.int64)
    starts = np.empty((2, band_rows * out_w), dtype=np.int64)
    for which, rows in enumerate((band_rows, last_rows)):
        for t in range(rows * out_w):
            r, c = (t % rows, t // rows) if stride > 1 else (t // out_w, t % out_w)
            order[which, t] = r * out_w + c
            starts[which, t] = (r * stride * padded_w + c * stride) * depth8
    out_rows = out.reshape(-1, filters)
    # Linear and leaky are max(v, slope * v), applied in registers; relu and the logistic in
    # place after each tile (12 inlined copies of every activation: compile 5.7 s longer).
    slope = splat8(LEAK if act == LEAKY else 1.0)
    in_place = act != LINEAR and act != LEAKY  # relu, logistic, tanh
    for job in prange(blocks // span * n_images * bands):
        first_block = job // (n_images * bands) * span
        n = job // bands % n_images
        first_out = job % bands * band_rows
        rows = min(band_rows, out_h - first_out)
        rows_in = (rows - 1) * stride + ksize
        if interleaved:  # the band's rows are in x as they are
            source = x_flat
        else:  # the band's rows, interleaved and padded, in a buffer that stays in L2
            band = aligned_empty(span * rows_in * padded_w * depth8).reshape(span, rows_in, padded_w, depth8)
            interleave_band(x, n, first_block, first_out * stride - padding, padding, band)
            source = band.reshape(-1)
        pixels = rows * out_w
        first_pixel = (n * out_h + first_out) * out_w
        for f in range(span * per_group // TILE_F):  # one quad's weights stay in L1 over the band
            b = first_block + f // quads
            quad = f % quads
            if interleaved:
                base = ((n * blocks + b) * x_h + first_out * stride) * padded_w * depth8
            else:
                base = (b - first_block) * rows_in * padded_w * depth8
            bias_at = (b * per_group + quad * TILE_F) * LANES
            b0, b1 = load8(bias_flat, bias_at), load8(bias_flat, bias_at + 8)
            b2, b3 = load8(bias_flat, bias_at + 16), load8(bias_flat, bias_at + 24)
            o = b * LANES * per_group + quad * TILE_F * (LANES if lanes_out else 1)
            rows_at = out_rows, o, per_group  # where the tiles go, and how far apart the groups
            which = 0 if rows == band_rows else 1
            for t in range(0, pixels, TILE_P):
                # Past the last pixel: re-read it, no store.
                t1, t2 = min(t + 1, pixels - 1), min(t + 2, pixels - 1)
                s0 = base + starts[which, t]
                s1 = base + starts[which, t1]
                s2 = base + starts[which, t2]
                acc = (b0, b1, b2, b3, b0, b1, b2, b3, b0, b1, b2, b3)  # the sums start at the bias
                w = (b * quads + quad) * depth * TILE_F * LANES
                for k in range(depth):
                    offset = offsets[k]
                    x0, x1 = load8(source, s0 + offset), load8(source, s1 + offset)
                    acc = fma_tile(x0, x1, load8(source, s2 + offset), weight_flat, w, acc)
                    w += TILE_F * LANES
                a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23 = acc
                q0, q1, q2 = order[which, t], order[which, t1], order[which, t2]
                store_tile_row(rows_at, first_pixel + q0, a00, a01, a02, a03, slope, lanes_out)
                if t + 1 < pixels:
                    store_tile_row(rows_at, first_pixel + q1, a10, a11, a12, a13, slope, lanes_out)
                if t + 2 < pixels:
                    store_tile_row(rows_at, first_pixel + q2, a20, a21, a22, a23, slope, lanes_out)
                if quad == quads - 1 and in_place:  # the block's filters are all summed
                    block_width = LANES * per_group
                    for i in range(t, min(t + TILE_P, pixels)):
                        pixel = first_pixel + order[which, i]
                        activate_columns(out_rows, pixel, 1, b * block_width, block_width, act)


def choose_jobs(
    n_images: int, padded_w: int, channels: int, x_bytes: int, weights: np.ndarray, out_h: int,
    ksize: int, stride: int, threads: int,
) -> tuple[int, int]:
    """(band_rows, span): output rows and blocks per job. Neither changes any sum.

    Where x outweighs the weights 4 times or more (early layers), a job takes every block
    (span), so that it reads its rows of x in order, once; otherwise one block, so that each
    thread reads only its blocks' weights, once per band (ResNeXt's 16x16x1024 stride-2
    layer, x 1.3 MB, weights 1.2 MB: 0.46 ms with every block per job, 0.37 with one). A
    band's input rows should fit in 3/4 of L2 (BAND_BYTES), and the jobs should number 4 per
    thread where the image allows."""
    blocks = weights.shape[0]
    span = blocks if x_bytes >= 4 * weights.nbytes else 1
    row_bytes = padded_w * channels // blocks * span * 4
    rows_in = max(ksize, BAND_BYTES // row_bytes)
    rows = min(MAX_BAND_ROWS, (rows_in - ksize) // stride + 1)
    return max(1, min(rows, blocks // span * n_images * out_h // (4 * threads))), span


def lane_order(channels: int, blocks: int) -> np.ndarray:
    """The channel order that interleave_band makes: channel i of the result is channel
    order[i] of NHWC, i = (b*C' + c)*8 + j for channel (8b + j)*C' + c. A convolution whose
    filters are put in this order writes what conv_lane_groups reads with `interleaved`; and
    with `lanes_out` conv_lane_groups writes its own filters in this order (C' then is F')."""
    group_channels = channels // (blocks * LANES)
    b, c, j = np.meshgrid(np.arange(blocks), np.arange(group_channels), np.arange(LANES), indexing="ij")
    return ((b * LANES + j) * group_channels + c).reshape(-1)


def conv2d_lane_groups(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    ksize: int,
    stride: int,
    padding: int,
    act: int,
    interleaved: bool = False,
    lanes_out: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """x (N, H, W, C) float32 -> (N, OH, OW, F), with weights and bias from pack_lane_weights.
    With `interleaved`, x is (N * G/8, H + 2p, W + 2p, 8C') as conv_lane_groups takes it;
    with `lanes_out`, the output channels are in lane_order(F, G/8). Written into `out`
    where given (C-contiguous)."""
    blocks, quads = weights.shape[:2]
    n_images, height, width, channels = x.shape
    if interleaved:  # a padded image per block
        n_images, channels = n_images // blocks, channels * blocks
        height, width = height - 2 * padding, width - 2 * padding
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    out = output_array((n_images, out_h, out_w, blocks * LANES * quads * TILE_F), out)
    threads = numba.get_num_threads()
    padded_w = width + 2 * padding
    x_bytes = x.nbytes
    band_rows, span = choose_jobs(n_images, padded_w, channels, x_bytes, weights, out_h, ksize, stride, threads)
    conv_lane_groups(
        x, weights, bias, act, ksize, stride, padding, interleaved, lanes_out, band_rows, span, out
    )
    return out
