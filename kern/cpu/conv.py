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
from kern.cpu.gemm import conv_gemm, pack_panels
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


def per_image(
    kernel, x: np.ndarray, packed: np.ndarray, bias: np.ndarray, filters: int, ksize: int,
    stride: int, padding: int, act: int,
) -> np.ndarray:
    """x (N, H, W, C) -> (N, OH, OW, filters) with a one-image kernel (conv2d_banded), image
    by image."""
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
