"""Convolution on the CPU, two ways side by side.

conv2d_direct: the definition as loops, parallel over (image, filter); easy to check, slow.
conv2d_gemm: the fast path. im2row turns each output pixel's input taps into one contiguous
row (the transpose of im2col), so both operands of the product keep the reduction index
contiguous; gemm.gemm_nt_bias_act then computes all filters x pixels with bias and activation
fused into the store. Batchnorm was folded into the weights at load time.
"""

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar
from kern.cpu.gemm import TILE_M, TILE_P, gemm_nt_bias_act, padded
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
def im2row(x, groups, ksize, stride, padding, out_h, out_w, rows):
    """One image x (C, H, W) -> rows (G, Pp, C/G*K*K): row p holds output pixel p's taps.

    Taps outside the image are 0 (zero padding); rows past the last pixel are zeroed.
    """
    channels, height, width = x.shape
    group_channels = channels // groups
    pixels = out_h * out_w
    for job in prange(groups * out_h):
        g, oy = job // out_h, job % out_h
        for ox in range(out_w):
            row = rows[g, oy * out_w + ox]
            k = 0
            for c in range(group_channels):
                plane = x[g * group_channels + c]
                for ky in range(ksize):
                    iy = oy * stride - padding + ky
                    for kx in range(ksize):
                        ix = ox * stride - padding + kx
                        inside = 0 <= iy < height and 0 <= ix < width
                        row[k] = plane[iy, ix] if inside else np.float32(0.0)
                        k += 1
    rows[:, pixels:, :] = 0


def pack_weights(weights: np.ndarray, groups: int) -> np.ndarray:
    """OIHW -> (G, F/G padded to a multiple of 4, C/G*K*K), zero rows at the end."""
    filters = weights.shape[0]
    per_group = filters // groups
    flat = weights.reshape(groups, per_group, -1)
    packed = np.zeros((groups, padded(per_group, TILE_M), flat.shape[2]), dtype=np.float32)
    packed[:, :per_group] = flat
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
) -> np.ndarray:
    """x (N, C, H, W) float32, packed from pack_weights -> (N, filters, OH, OW)."""
    n_images, _, height, width = x.shape
    groups, _, depth = packed.shape
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    pixels = out_h * out_w
    rows = np.empty((groups, padded(pixels, TILE_P), depth), dtype=np.float32)
    out = np.empty((n_images, filters, out_h, out_w), dtype=np.float32)
    for n in range(n_images):
        im2row(x[n], groups, ksize, stride, padding, out_h, out_w, rows)
        gemm_nt_bias_act(
            packed, rows, bias, act, out[n].reshape(filters, pixels), filters // groups, pixels
        )
    return out
