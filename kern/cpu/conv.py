"""Convolution on the CPU, two ways side by side.

conv2d_direct (NCHW): the definition as loops, parallel over (image, filter); slow, obvious.
conv2d_gemm (NHWC, channels-last, the backend's own layout): the fast path, a GEMM of
(output pixels) x (K*K*C/groups taps) by (taps) x (filters), computed by gemm.conv_gemm
straight from the zero-padded image, with bias, activation and an optional residual fused
into its store. Batchnorm was folded into the weights at load time.
conv2d_banded: grouped convolutions with very narrow groups (ResNeXt's 4 and 8 channels per
group), where a GEMM per group would multiply tiny matrices.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar
from kern.cpu.gemm import CHUNK_TILES, TILE_M, TILE_P, conv_gemm, pack_panels, store_pixel
from kern.cpu.simd import fma8, load8, splat8
from kern.params import conv_output_size


@njit(parallel=True, fastmath=True, cache=True)
def conv2d_direct(x, weights, bias, stride, padding, groups, act):
    """x (N, C, H, W), weights (F, C/groups, K, K) -> (N, F, OH, OW). One thread per (n, f)."""
    n_images, _, height, width = x.shape
    filters, group_channels, ksize, _ = weights.shape
    out_h = (height + 2 * padding - ksize) // stride + 1
    out_w = (width + 2 * padding - ksize) // stride + 1
    per_group = filters // groups
    out = np.empty((n_images, filters, out_h, out_w), dtype=np.float32)
    for job in prange(n_images * filters):
        n, f = job // filters, job % filters
        c0 = (f // per_group) * group_channels
        for oy in range(out_h):
            for ox in range(out_w):
                total = np.float32(0.0)
                for c in range(group_channels):
                    for ky in range(ksize):
                        iy = oy * stride - padding + ky
                        if 0 <= iy < height:
                            for kx in range(ksize):
                                ix = ox * stride - padding + kx
                                if 0 <= ix < width:
                                    total += weights[f, c, ky, kx] * x[n, c0 + c, iy, ix]
                out[n, f, oy, ox] = activate_scalar(total + bias[f], act)
    return out


@njit(parallel=True, cache=True)
def conv2d_banded(image, band, bias, ksize, stride, out, act):
    """Grouped NHWC convolution with as many outputs as inputs per group (ResNeXt's 3x3).

    With cg channels per group, output o = g*cg + f reads inputs g*cg + c, i.e. o + delta
    with delta = c - f in -(cg-1)..cg-1: per tap, the weights form a band around the
    diagonal, stored as one row per delta (zero where c falls outside the group), so
    out[p, o] += image[tap, o + delta] * band[tap, delta, o] for all o at once: vectors over
    channels, where a GEMM per group would multiply matrices only cg wide. It does
    (2cg - 1)/cg times the useful work (1.75x for cg = 4), all of it in whole vectors.

    image (H, W, half + C16 + half): one input image, zero-padded in space and with `half` =
    cg - 1 zero channels on either side (C16: C rounded up to 16), so that every shifted read
    stays inside the pixel's zeros; band (K*K, 2cg - 1, C16) from pack_band; out (OH, OW, C).
    The tile is the GEMM's: 6 pixels x 16 channels in 12 vector registers.
    """
    height, width, image_channels = image.shape
    out_h, out_w, channels = out.shape
    taps, bands, padded_channels = band.shape
    pixels = out_h * out_w
    c_blocks = padded_channels // TILE_M
    flat = image.reshape(-1)
    weights = band.reshape(-1)
    out_rows = out.reshape(pixels, channels)
    starts = np.empty(pixels, dtype=np.int64)
    for oy in range(out_h):
        for ox in range(out_w):
            starts[oy * out_w + ox] = (oy * stride * width + ox * stride) * image_channels
    p_tiles = (pixels + TILE_P - 1) // TILE_P
    chunks = (p_tiles + CHUNK_TILES - 1) // CHUNK_TILES
    last = pixels - 1
    for job in prange(chunks * c_blocks):
        o = job % c_blocks * TILE_M
        first_tile = job // c_blocks * CHUNK_TILES
        count = min(TILE_M, channels - o)
        for tile in range(first_tile, min(p_tiles, first_tile + CHUNK_TILES)):
            p = tile * TILE_P
            s0 = starts[p] + o
            s1 = starts[min(p + 1, last)] + o
            s2 = starts[min(p + 2, last)] + o
            s3 = starts[min(p + 3, last)] + o
            s4 = starts[min(p + 4, last)] + o
            s5 = starts[min(p + 5, last)] + o
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = splat8(0.0)
            for tap in range(taps):
                at = (tap // ksize * width + tap % ksize) * image_channels
                for delta in range(bands):
                    w = (tap * bands + delta) * padded_channels + o
                    w0 = load8(weights, w)
                    w1 = load8(weights, w + 8)
                    i = at + delta
                    c00 = fma8(load8(flat, s0 + i), w0, c00)
                    c01 = fma8(load8(flat, s0 + i + 8), w1, c01)
                    c10 = fma8(load8(flat, s1 + i), w0, c10)
                    c11 = fma8(load8(flat, s1 + i + 8), w1, c11)
                    c20 = fma8(load8(flat, s2 + i), w0, c20)
                    c21 = fma8(load8(flat, s2 + i + 8), w1, c21)
                    c30 = fma8(load8(flat, s3 + i), w0, c30)
                    c31 = fma8(load8(flat, s3 + i + 8), w1, c31)
                    c40 = fma8(load8(flat, s4 + i), w0, c40)
                    c41 = fma8(load8(flat, s4 + i + 8), w1, c41)
                    c50 = fma8(load8(flat, s5 + i), w0, c50)
                    c51 = fma8(load8(flat, s5 + i + 8), w1, c51)
            store_pixel(out_rows, out_rows, p, o, count, c00, c01, bias, act, -1)
            if p + 1 < pixels:
                store_pixel(out_rows, out_rows, p + 1, o, count, c10, c11, bias, act, -1)
            if p + 2 < pixels:
                store_pixel(out_rows, out_rows, p + 2, o, count, c20, c21, bias, act, -1)
            if p + 3 < pixels:
                store_pixel(out_rows, out_rows, p + 3, o, count, c30, c31, bias, act, -1)
            if p + 4 < pixels:
                store_pixel(out_rows, out_rows, p + 4, o, count, c40, c41, bias, act, -1)
            if p + 5 < pixels:
                store_pixel(out_rows, out_rows, p + 5, o, count, c50, c51, bias, act, -1)


def conv2d_banded_images(
    x: np.ndarray, band: np.ndarray, bias: np.ndarray, ksize: int, stride: int, padding: int, act: int
) -> np.ndarray:
    """x (N, H, W, C) -> (N, OH, OW, C) through conv2d_banded, image by image."""
    n_images, height, width, channels = x.shape
    half = (band.shape[1] - 1) // 2
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    out = np.empty((n_images, out_h, out_w, channels), dtype=np.float32)
    image_channels = half + band.shape[2] + half
    image = np.zeros((height + 2 * padding, width + 2 * padding, image_channels), dtype=np.float32)
    for n in range(n_images):
        image[padding : padding + height, padding : padding + width, half : half + channels] = x[n]
        conv2d_banded(image, band, bias, ksize, stride, out[n], act)
    return out


BANDED_GROUP_WIDTH = 8  # grouped convs this narrow go through conv2d_banded: measured faster


def pack_band(weights: np.ndarray) -> np.ndarray:
    """OIHW with as many filters as channels per group -> (K*K, 2*cg - 1, O rounded up to 16)
    for conv2d_banded: band[tap, delta, o] is the weight of input o + delta - (cg - 1)."""
    filters, cg, ksize, _ = weights.shape
    band = np.zeros((ksize * ksize, 2 * cg - 1, -(-filters // TILE_M) * TILE_M), dtype=np.float32)
    taps = weights.reshape(filters, cg, ksize * ksize)
    for o in range(filters):
        f = o % cg
        for c in range(cg):
            band[:, c - f + cg - 1, o] = taps[o, c]
    return band


def pack_weights(weights: np.ndarray, groups: int) -> np.ndarray:
    """OIHW -> gemm.pack_panels of (G, F/G, C/G*K*K): each filter's taps in (ky, kx, c)
    order, the order of im2row's rows."""
    per_group = weights.shape[0] // groups
    return pack_panels(weights.transpose(0, 2, 3, 1).reshape(groups, per_group, -1))


def conv2d_gemm(
    x: np.ndarray,
    packed: np.ndarray,
    bias: np.ndarray,
    filters: int,
    ksize: int,
    stride: int,
    padding: int,
    act: int,
    residual: np.ndarray | None = None,
    residual_act: int = -1,
) -> np.ndarray:
    """x (N, H, W, C) float32, packed from pack_weights -> (N, OH, OW, filters); with a
    residual (N, OH, OW, filters): residual_act(that + residual), fused into the store."""
    n_images, height, width, channels = x.shape
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    out = np.empty((n_images, out_h, out_w, filters), dtype=np.float32)
    image = x[0]
    if padding:  # a zero border once, so that the kernel reads every tap without a test
        image = np.zeros((height + 2 * padding, width + 2 * padding, channels), dtype=np.float32)
    for n in range(n_images):
        if padding:
            image[padding : padding + height, padding : padding + width] = x[n]
        else:
            image = x[n]
        conv_gemm(
            image, packed, bias, act, ksize, stride, out[n], out[n] if residual is None else residual[n],
            -1 if residual is None else residual_act,
        )
    return out
