"""Convolution on the CPU, two ways side by side.

conv2d_direct (NCHW): the definition as loops, parallel over (image, filter); slow, obvious.
conv2d_gemm (NHWC, channels-last, the backend's own layout): the fast path. An output pixel
needs the size x size x C/groups input values around it; in NHWC each tap's channels are
already contiguous, so im2row builds a pixel's row from `size*size` contiguous copies, and a
1x1 stride-1 convolution needs no copy at all: the image IS the matrix of rows. The GEMM
(gemm.py) then computes all pixels x filters with bias and activation fused into its store.
Batchnorm was folded into the weights at load time.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar
from kern.cpu.gemm import DEPTH_MULTIPLE, TILE_M, gemm_nt_bias_act, padded
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


@njit(parallel=True, fastmath=True, cache=True)
def conv2d_shallow(x, taps, bias, ksize, stride, padding, out, act):
    """NHWC direct convolution vectorized over output channels, for inputs with few channels.

    x (H, W, C) one image; taps (K*K*C, F) (the weights transposed); out (OH, OW, F).
    out[p, :] += x[tap] * taps[tap, :] for every tap: the filter loop is contiguous in both,
    so it vectorizes. A dot product over only K*K*C = 27 inputs (an RGB 3x3 layer) would
    spend more on summing its vector lanes than on multiplying.
    """
    height, width, channels = x.shape
    out_h, out_w, filters = out.shape
    for oy in prange(out_h):
        for ox in range(out_w):
            acc = out[oy, ox]
            acc[:] = bias
            for ky in range(ksize):
                iy = oy * stride - padding + ky
                if 0 <= iy < height:
                    for kx in range(ksize):
                        ix = ox * stride - padding + kx
                        if 0 <= ix < width:
                            row = (ky * ksize + kx) * channels
                            for c in range(channels):
                                v = x[iy, ix, c]
                                w = taps[row + c]
                                for f in range(filters):
                                    acc[f] += v * w[f]
            for f in range(filters):
                acc[f] = activate_scalar(acc[f], act)


@njit(parallel=True, fastmath=True, cache=True)
def conv2d_banded(x, band, bias, ksize, stride, padding, out, act):
    """Grouped NHWC convolution with as many outputs as inputs per group (ResNeXt's 3x3).

    x (H, W, C) one image; band (K*K, 2*cg - 1, C); out (OH, OW, C). With cg channels per
    group, output o = g*cg + f reads inputs g*cg + c, i.e. o + delta with delta = c - f in
    -(cg-1)..cg-1: per tap, the weights form a band around the diagonal, stored as one row per
    delta (zero where c falls outside the group). out[p, :] += x[tap, : + delta] * band[delta]
    is then a loop over all channels, where a GEMM per group would do dot products of only
    cg*K*K terms. The pixel is copied into a zero-padded buffer so that every delta's loop has
    the same fixed bounds: that is what lets LLVM vectorize it (clipped bounds ran 7x slower).
    """
    height, width, channels = x.shape
    out_h, out_w, _ = out.shape
    bands = band.shape[1]
    half = bands // 2
    for oy in prange(out_h):
        padded_pixel = np.zeros(channels + 2 * half, dtype=np.float32)
        for ox in range(out_w):
            acc = out[oy, ox]
            acc[:] = bias
            for ky in range(ksize):
                iy = oy * stride - padding + ky
                if 0 <= iy < height:
                    for kx in range(ksize):
                        ix = ox * stride - padding + kx
                        if 0 <= ix < width:
                            padded_pixel[half : half + channels] = x[iy, ix]
                            tap = band[ky * ksize + kx]
                            for d in range(bands):
                                weights = tap[d]
                                shifted = padded_pixel[d : d + channels]
                                for o in range(channels):
                                    acc[o] += shifted[o] * weights[o]
            for o in range(channels):
                acc[o] = activate_scalar(acc[o], act)


@njit(parallel=True, cache=True)
def im2row(x, groups, ksize, stride, padding, out_h, out_w, depth, rows):
    """One NHWC image x (H, W, C) -> rows (OH*OW, groups*depth).

    Row p, group g holds the taps of output pixel p in (ky, kx, channel) order; taps outside
    the image and the padding up to `depth` are zeros. In NHWC the `ksize` taps of one kernel
    row are adjacent in memory, so with one group each kernel row is ONE contiguous copy of
    ksize*C values (for an RGB 7x7 stem: 21 values, not 7 copies of 3).
    """
    height, width, channels = x.shape
    group_channels = channels // groups
    run = ksize * group_channels
    for job in prange(out_h * out_w):
        oy, ox = job // out_w, job % out_w
        row = rows[job]
        x0 = ox * stride - padding
        inside_x = 0 <= x0 and x0 + ksize <= width
        for g in range(groups):
            base = g * depth
            c0 = g * group_channels
            for ky in range(ksize):
                iy = oy * stride - padding + ky
                k = base + ky * run
                if iy < 0 or iy >= height:
                    row[k : k + run] = 0
                elif inside_x and groups == 1:
                    row[k : k + run] = x[iy].ravel()[x0 * channels : x0 * channels + run]
                else:
                    for kx in range(ksize):
                        ix = x0 + kx
                        tap = k + kx * group_channels
                        if 0 <= ix < width:
                            row[tap : tap + group_channels] = x[iy, ix, c0 : c0 + group_channels]
                        else:
                            row[tap : tap + group_channels] = 0
            row[base + ksize * run : base + depth] = 0


SHALLOW_DEPTH = 32  # convs with C*K*K this small (a 3x3 RGB layer) use conv2d_shallow: measured faster


def pack_taps(weights: np.ndarray) -> np.ndarray:
    """OIHW -> (K*K*C, F) for conv2d_shallow: row (ky, kx, c) holds that tap for every filter."""
    return np.ascontiguousarray(weights.transpose(2, 3, 1, 0).reshape(-1, weights.shape[0]))


def per_image(
    kernel, x: np.ndarray, packed: np.ndarray, bias: np.ndarray, filters: int, ksize: int,
    stride: int, padding: int, act: int,
) -> np.ndarray:
    """x (N, H, W, C) -> (N, OH, OW, filters) with a one-image kernel (conv2d_shallow,
    conv2d_banded), image by image."""
    n_images, height, width, _ = x.shape
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    out = np.empty((n_images, out_h, out_w, filters), dtype=np.float32)
    for n in range(n_images):
        kernel(x[n], packed, bias, ksize, stride, padding, out[n], act)
    return out


BANDED_GROUP_WIDTH = 8  # grouped convs this narrow go through conv2d_banded: measured faster


def pack_band(weights: np.ndarray) -> np.ndarray:
    """OIHW with as many filters as channels per group -> (K*K, 2*cg - 1, O) for conv2d_banded."""
    filters, cg, ksize, _ = weights.shape
    band = np.zeros((ksize * ksize, 2 * cg - 1, filters), dtype=np.float32)
    taps = weights.reshape(filters, cg, ksize * ksize)
    for o in range(filters):
        f = o % cg
        for c in range(cg):
            band[:, c - f + cg - 1, o] = taps[o, c]
    return band


def pack_weights(weights: np.ndarray, groups: int) -> np.ndarray:
    """OIHW -> (G, F/G padded to 4, depth): each filter's taps in (ky, kx, c) order, the rows
    and the depth (C/G*K*K, padded to a multiple of 8) filled up with zeros."""
    filters = weights.shape[0]
    per_group = filters // groups
    flat = weights.transpose(0, 2, 3, 1).reshape(groups, per_group, -1)
    depth = padded(flat.shape[2], DEPTH_MULTIPLE)
    packed = np.zeros((groups, padded(per_group, TILE_M), depth), dtype=np.float32)
    packed[:, :per_group, : flat.shape[2]] = flat
    return packed


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
    groups, _, depth = packed.shape
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    pixels = out_h * out_w
    out = np.empty((n_images, out_h, out_w, filters), dtype=np.float32)
    # A 1x1 stride-1 convolution reads the image itself, when no depth padding is needed.
    direct = ksize == 1 and stride == 1 and padding == 0 and depth * groups == channels
    rows = None if direct else np.empty((pixels, groups * depth), dtype=np.float32)
    for n in range(n_images):
        if direct:
            rows = x[n].reshape(pixels, channels)
        else:
            im2row(x[n], groups, ksize, stride, padding, out_h, out_w, depth, rows)
        out_n = out[n].reshape(pixels, filters)
        residual_n = out_n if residual is None else residual[n].reshape(pixels, filters)
        gemm_nt_bias_act(
            packed, rows, bias, act, out_n, filters // groups, pixels, residual_n,
            -1 if residual is None else residual_act,
        )
    return out
