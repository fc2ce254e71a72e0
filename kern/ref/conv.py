"""Convolution, the plain way: first as the obvious loops, then as im2col + one matrix product.

Shapes: x is (N, C, H, W); weights are (F, C/groups, K, K) (OIHW, Darknet's file order);
the output is (N, F, OH, OW) with OH = (H + 2*padding - K)//stride + 1.

Worked example of im2col (one channel, 3x3 input, 2x2 filter, stride 1, no padding):

    x = a b c      columns (one per output pixel, one row per filter tap):
        d e f        tap (0,0): a b d e
        g h i        tap (0,1): b c e f
                     tap (1,0): d e g h
                     tap (1,1): e f h i
    Then out[f, pixel] = sum over taps of w[f, tap] * column[tap, pixel]: a matrix product
    (F x taps) @ (taps x pixels). With C channels and groups, taps = C/groups * K * K.
"""

from __future__ import annotations

import numpy as np

from kern.params import conv_output_size, pair


def _output_size(x: np.ndarray, weights: np.ndarray, stride: int, padding) -> tuple[int, int]:
    """Weights (F, C, KH, KW); padding one number or (height, width): Caffe's non-square kernels."""
    pad_h, pad_w = pair(padding)
    return (
        conv_output_size(x.shape[2], weights.shape[2], stride, pad_h),
        conv_output_size(x.shape[3], weights.shape[3], stride, pad_w),
    )


def conv2d_loops(
    x: np.ndarray, weights: np.ndarray, stride: int, padding: int, groups: int
) -> np.ndarray:
    """Seven nested loops, exactly the definition. Slow: for tests on tiny shapes only."""
    n_images, _, height, width = x.shape
    filters, group_channels, k_h, k_w = weights.shape
    pad_h, pad_w = pair(padding)
    out_h, out_w = _output_size(x, weights, stride, padding)
    filters_per_group = filters // groups
    out = np.zeros((n_images, filters, out_h, out_w), dtype=np.float64)
    for n in range(n_images):
        for f in range(filters):
            group = f // filters_per_group
            for oy in range(out_h):
                for ox in range(out_w):
                    total = 0.0
                    for c in range(group_channels):
                        for ky in range(k_h):
                            for kx in range(k_w):
                                iy = oy * stride - pad_h + ky
                                ix = ox * stride - pad_w + kx
                                if 0 <= iy < height and 0 <= ix < width:
                                    channel = group * group_channels + c
                                    total += weights[f, c, ky, kx] * x[n, channel, iy, ix]
                    out[n, f, oy, ox] = total
    return out.astype(x.dtype)


def im2col(x: np.ndarray, ksize, stride: int, padding) -> np.ndarray:
    """(C, H, W) -> (C*KH*KW, OH*OW): one column of input taps per output pixel. ksize and
    padding: one number, or (height, width)."""
    channels, height, width = x.shape
    (k_h, k_w), (pad_h, pad_w) = pair(ksize), pair(padding)
    out_h = conv_output_size(height, k_h, stride, pad_h)
    out_w = conv_output_size(width, k_w, stride, pad_w)
    padded = np.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    columns = np.empty((channels, k_h, k_w, out_h, out_w), dtype=x.dtype)
    for ky in range(k_h):
        for kx in range(k_w):
            rows = slice(ky, ky + stride * (out_h - 1) + 1, stride)
            cols = slice(kx, kx + stride * (out_w - 1) + 1, stride)
            columns[:, ky, kx] = padded[:, rows, cols]
    return columns.reshape(channels * k_h * k_w, out_h * out_w)


def conv2d_im2col(
    x: np.ndarray, weights: np.ndarray, stride: int, padding: int, groups: int
) -> np.ndarray:
    """Per image and group: (F/groups x taps) @ im2col (taps x pixels). Darknet's own method."""
    n_images = x.shape[0]
    filters, group_channels = weights.shape[:2]
    ksize = weights.shape[2:]
    out_h, out_w = _output_size(x, weights, stride, padding)
    filters_per_group = filters // groups
    out = np.empty((n_images, filters, out_h * out_w), dtype=x.dtype)
    for n in range(n_images):
        for g in range(groups):
            inputs = x[n, g * group_channels : (g + 1) * group_channels]
            columns = im2col(inputs, ksize, stride, padding)
            w = weights[g * filters_per_group : (g + 1) * filters_per_group]
            out[n, g * filters_per_group : (g + 1) * filters_per_group] = (
                w.reshape(filters_per_group, -1) @ columns
            )
    return out.reshape(n_images, filters, out_h, out_w)


def col2im(
    columns: np.ndarray, shape: tuple[int, int, int], ksize: int, stride: int, padding: int
) -> np.ndarray:
    """The adjoint of im2col: (C*K*K, OH*OW) -> (C, H, W), each column's taps ADDED back where
    im2col read them (a cell read by several windows gets the sum; the padding is dropped)."""
    channels, height, width = shape
    out_h = conv_output_size(height, ksize, stride, padding)
    out_w = conv_output_size(width, ksize, stride, padding)
    padded = np.zeros((channels, height + 2 * padding, width + 2 * padding), dtype=columns.dtype)
    taps = columns.reshape(channels, ksize, ksize, out_h, out_w)
    for ky in range(ksize):
        for kx in range(ksize):
            rows = slice(ky, ky + stride * (out_h - 1) + 1, stride)
            cols = slice(kx, kx + stride * (out_w - 1) + 1, stride)
            padded[:, rows, cols] += taps[:, ky, kx]
    return padded[:, padding : padding + height, padding : padding + width]


def conv2d_backward_input(
    dy: np.ndarray, weights: np.ndarray, in_shape: tuple[int, int, int], stride: int, padding: int, groups: int
) -> np.ndarray:
    """dL/dx of conv2d_im2col from dL/dy: per image and group, the columns W^T @ dy, added back
    into the image by col2im (the transposed convolution). Shapes as conv2d_im2col's."""
    n_images = dy.shape[0]
    filters, group_channels, ksize, _ = weights.shape
    per_group = filters // groups
    dx = np.empty((n_images, *in_shape), dtype=dy.dtype)
    for n in range(n_images):
        for g in range(groups):
            w = weights[g * per_group : (g + 1) * per_group].reshape(per_group, -1)
            grad = dy[n, g * per_group : (g + 1) * per_group].reshape(per_group, -1)
            shape = (group_channels, *in_shape[1:])
            columns = w.T @ grad
            part = col2im(columns, shape, ksize, stride, padding)
            dx[n, g * group_channels : (g + 1) * group_channels] = part
    return dx


def conv2d_backward_weights(
    x: np.ndarray, dy: np.ndarray, ksize: int, stride: int, padding: int, groups: int
) -> np.ndarray:
    """dL/dW of conv2d_im2col, summed over the batch: per group, dy @ im2col(x)^T, (F, C/groups, K, K)."""
    n_images, channels = x.shape[:2]
    filters = dy.shape[1]
    per_group, group_channels = filters // groups, channels // groups
    dw = np.zeros((filters, group_channels * ksize * ksize), dtype=dy.dtype)
    for n in range(n_images):
        for g in range(groups):
            columns = im2col(x[n, g * group_channels : (g + 1) * group_channels], ksize, stride, padding)
            grad = dy[n, g * per_group : (g + 1) * per_group].reshape(per_group, -1)
            dw[g * per_group : (g + 1) * per_group] += grad @ columns.T
    return dw.reshape(filters, group_channels, ksize, ksize)
