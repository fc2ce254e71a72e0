"""Convolution on the CPU, two ways side by side.

conv2d_direct (NCHW): the definition as loops, parallel over (image, filter); slow, obvious.
conv2d_gemm (NHWC, channels-last, the backend's own layout): the fast path, a GEMM of
(output pixels) x (K*K*C/groups taps) by (taps) x (filters), computed by gemm.conv_gemm
straight from the zero-padded image, with bias, activation and an optional residual fused
into its store. Batchnorm was folded into the weights at load time. Groups narrower than a
16-filter panel are merged into panel-wide block-diagonal groups when packed; ResNeXt's
(groups of 8 and more, 4 to 32 wide) go to grouped.conv2d_lane_groups instead.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from kern.cpu.activation import activate_scalar
from kern.cpu.buffers import Empty, new_array
from kern.cpu.gemm import TILE_M, conv_gemm, conv_gemm16, pack_panels
from kern.cpu.simd import output_array
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


def merged_groups(groups: int, per_group: int) -> int:
    """How many groups to pack as one: the most, dividing `groups`, whose filters fit one
    panel of 16. ResNeXt's 32 groups of 4 filters become 8 groups of 16, each with a
    block-diagonal weight matrix. The multiply-adds are as many (the k loop grows as the
    groups merge), but every panel and store is whole: measured 1.5x faster for 8 filters per
    group, equal for 4, and as fast as a dedicated banded kernel was (bit-identical results)."""
    merge = 1
    for m in range(1, groups + 1):
        if groups % m == 0 and m * per_group <= TILE_M:
            merge = m
    return merge


def pack_weights(weights: np.ndarray, groups: int) -> np.ndarray:
    """OIHW -> gemm.pack_panels of (G', F/G', C/G'*K*K), G' = groups / merged_groups: each
    filter's taps in (ky, kx, c) order, the order of the kernel's tap table; merged groups
    get zeros for the channels of their other groups."""
    filters, group_channels, k_h, k_w = weights.shape
    per_group = filters // groups
    merge = merged_groups(groups, per_group)
    blocks = weights.reshape(groups // merge, merge, per_group, group_channels, k_h, k_w)
    merged = np.zeros((groups // merge, merge, per_group, merge, group_channels, k_h, k_w), np.float32)
    for j in range(merge):
        merged[:, j, :, j] = blocks[:, j]
    merged = merged.reshape(filters, merge * group_channels, k_h, k_w)
    return pack_panels(merged.transpose(0, 2, 3, 1).reshape(groups // merge, merge * per_group, -1))


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
    out_planes: int = 1,
    out_padding: int = 0,
    lanes: int = 8,
    input_padded: bool = False,
    out: np.ndarray | None = None,
    shape_w: tuple[int, int] | None = None,
    empty: Empty = new_array,
) -> np.ndarray:
    """x (N, H, W, C) float32, packed from pack_weights -> (N, OH, OW, filters); with a
    residual (N, OH, OW, filters): residual_act(that + residual), fused into the store.
    With input_padded, x is (N, H + 2p, W + 2p, C), its border of p = padding already zero
    (written so by the convolution before: out_padding below), and is read as it is.

    For a next layer that wants it (grouped.conv2d_lane_groups), out_planes and out_padding
    q give (N * out_planes, OH + 2q, OW + 2q, filters / out_planes) instead: each run of
    filters / out_planes channels as an image of its own inside a zero border of q.

    lanes: 8 (gemm.conv_gemm) or 16 (gemm.conv_gemm16, AVX-512); the same result either way.
    out: where to write (a planned place: C-contiguous, as many floats), else a new array.
    shape_w: (kernel width, padding along the width) where they differ from ksize and padding
    (Caffe's 1x7 and 7x1 kernels): the tap table only needs the width (gemm.gemm_tables).
    empty: where new arrays come from (kern/cpu/buffers.py)."""
    n_images, height, width, channels = x.shape
    k_w, pad_w = shape_w or (ksize, padding)
    if input_padded:
        height, width = height - 2 * padding, width - 2 * pad_w
    out_h = conv_output_size(height, ksize, stride, padding) + 2 * out_padding
    out_w = conv_output_size(width, k_w, stride, pad_w) + 2 * out_padding
    out_shape = (n_images * out_planes, out_h, out_w, filters // out_planes)
    out = output_array(out_shape, empty(out_shape) if out is None else out)
    if out_padding:
        zero_border(out, out_padding)
    images = x
    if (padding or pad_w) and not input_padded:  # a zero border once: every tap read without a test
        images = pad(x, padding, empty) if pad_w == padding else pad_rectangle(x, padding, pad_w)
    if residual is None:
        residual, residual_act = out, -1  # not read
    kernel = conv_gemm16 if lanes == 16 else conv_gemm
    kernel(images, packed, bias, act, k_w, stride, out, out_planes, out_padding, residual, residual_act)
    return out


PARALLEL_PAD_BYTES = 1 << 20  # below, NumPy's copy beats a parallel launch (0.13 vs 0.17 ms at 0.8 MB)


def pad(x: np.ndarray, padding: int, empty: Empty = new_array) -> np.ndarray:
    """NHWC images inside a zero border of `padding`."""
    n_images, height, width, channels = x.shape
    images = empty((n_images, height + 2 * padding, width + 2 * padding, channels))
    if x.nbytes >= PARALLEL_PAD_BYTES:
        pad_images(x, padding, images)
        return images
    images.fill(0.0)
    images[:, padding : padding + height, padding : padding + width] = x
    return images


def pad_rectangle(x: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """NHWC images inside a zero border of pad_h rows and pad_w columns."""
    n_images, height, width, channels = x.shape
    images = np.zeros((n_images, height + 2 * pad_h, width + 2 * pad_w, channels), dtype=np.float32)
    images[:, pad_h : pad_h + height, pad_w : pad_w + width] = x
    return images


@njit(parallel=True, cache=True)
def pad_images(x, padding, out):
    """out (N, H + 2p (+ more), W + 2p (+ more), C) = x (N, H, W, C) inside a zero border of p
    (and zeros in the rows and columns beyond), in one pass over out, rows in parallel.
    NumPy's zeros-then-copy is two passes on one thread: 3.2 ms against 1.9 for 8x64x64x128
    (2 threads, AMD EPYC)."""
    n_images, height, width, channels = x.shape
    padded_h = out.shape[1]
    for job in prange(n_images * padded_h):
        n, row = job // padded_h, job % padded_h
        iy = row - padding
        target = out[n, row]
        if 0 <= iy < height:
            target[:padding] = 0.0
            source = x[n, iy]
            for ix in range(width):  # a loop, not an array assignment: no shape check to compile
                for c in range(channels):
                    target[padding + ix, c] = source[ix, c]
            target[padding + width :] = 0.0
        else:
            target[:] = 0.0


def zero_border(images: np.ndarray, padding: int) -> None:
    """Zero the outer `padding` rows and columns of NHWC images, in place."""
    images[:, :padding] = 0.0
    images[:, -padding:] = 0.0
    images[:, :, :padding] = 0.0
    images[:, :, -padding:] = 0.0


def permute_channels(packed: np.ndarray, ksize: int, order: np.ndarray) -> np.ndarray:
    """Packed weights of one group (pack_weights) for an input whose channels come reordered:
    input channel i is channel order[i] of the one the weights were made for."""
    channels = len(order)
    taps = (np.arange(ksize * ksize)[:, np.newaxis] * channels + order).reshape(-1)  # (ky, kx, c)
    return np.ascontiguousarray(packed[:, :, taps])


def permute_filters(packed: np.ndarray, filters: int, order: np.ndarray) -> np.ndarray:
    """Packed weights of one group (pack_weights) with their filters reordered: filter i of
    the result is filter order[i] of `packed`, so output channel i becomes channel order[i]."""
    _, _, depth, _ = packed.shape
    rows = packed[0].transpose(0, 2, 1).reshape(-1, depth)[:filters]  # (filters, taps), unpacked
    return pack_panels(rows[order][np.newaxis])


# ---- backward: the input's gradient, a convolution of dL/dz with the turned weights ----------
# In one dimension, forward y[o] = sum_k W[k] x[o*s - p + k]. So x[i] gets W[k] dy[o] wherever
# i + p = o*s + k: for the rows i of one phase (i + p) % s = r, only the taps k = r, r + s, ...
# take part, and x's rows of that phase are a plain stride-1 convolution of dy with those taps
# in reverse order. Stride 1 is one phase: the whole kernel turned around, padding K - 1 - p.
# So every case runs on the forward GEMM (conv2d_gemm), the weights turned and packed once per
# update (transposed_weights).


@dataclass(frozen=True)
class Phase:
    """One phase (r_y, r_x) of a strided convolution's input gradient: its turned taps packed
    for conv2d_gemm as a `size` x `size` kernel (zero taps where it has fewer rows or
    columns), and the dy rows and columns it reads from `first`."""

    packed: np.ndarray
    size: int
    rows: tuple[int, int, int]  # (r, taps along y, first output index b0)
    cols: tuple[int, int, int]


def _phase_taps(ksize: int, stride: int, r: int) -> int:
    return max(0, -(-(ksize - r) // stride))


def transposed_weights(weights: np.ndarray, groups: int, stride: int, padding: int) -> list[Phase]:
    """The phases of conv2d_backward_input for OIHW weights, each packed once."""
    filters, group_channels, ksize, _ = weights.shape
    per_group = filters // groups
    # (C, F/G, K, K): filter c of the turned convolution reads the F/G gradients of its group.
    turned = weights.reshape(groups, per_group, group_channels, ksize, ksize).transpose(0, 2, 1, 3, 4)
    turned = turned.reshape(groups * group_channels, per_group, ksize, ksize)
    phases = []
    for ry in range(stride):
        for rx in range(stride):
            ty, tx = _phase_taps(ksize, stride, ry), _phase_taps(ksize, stride, rx)
            if not ty or not tx:
                continue
            size = max(ty, tx)
            taps = np.zeros((groups * group_channels, per_group, size, size), dtype=np.float32)
            # Tap u of the phase's kernel is W's row r + s (T - 1 - u): the taps reversed.
            rows = ry + stride * (ty - 1 - np.arange(ty))
            cols = rx + stride * (tx - 1 - np.arange(tx))
            taps[:, :, :ty, :tx] = turned[:, :, rows][:, :, :, cols]
            first_y = -((ry - padding) // stride)  # ceil((p - r) / s)
            first_x = -((rx - padding) // stride)
            phases.append(Phase(pack_weights(taps, groups), size, (ry, ty, first_y), (rx, tx, first_x)))
    return phases


def conv2d_backward_input(
    dz: np.ndarray, phases: list[Phase], in_shape: tuple[int, int, int], stride: int, padding: int,
    lanes: int = 8, into: np.ndarray | None = None, empty: Empty = new_array, out: np.ndarray | None = None,
) -> np.ndarray:
    """dL/dx (N, H, W, C) from dL/dz (N, OH, OW, F) (C, H, W: in_shape), added into `into`
    where given: the result is a new array (`out` where given) holding into + this where the
    store adds it (one phase), else `into`. empty gives the scratch."""
    channels, height, width = in_shape
    n_images, out_h, out_w, filters = dz.shape
    bias = np.zeros(channels, dtype=np.float32)
    if stride == 1 and len(phases) == 1 and padding <= phases[0].size - 1:
        # One phase, read with the padding K - 1 - p, the residual add fused into the store.
        turned = phases[0]
        residual = {} if into is None else {"residual": into, "residual_act": 0}
        return conv2d_gemm(dz, turned.packed, bias, channels, turned.size, 1, turned.size - 1 - padding, 0,
                           lanes=lanes, out=out, empty=empty, **residual)
    dx = into
    if dx is None:
        dx = empty((n_images, height, width, channels)) if out is None else out
        dx.fill(0.0)
    for phase in phases:
        ry, ty, first_y = phase.rows
        rx, tx, first_x = phase.cols
        last_y = (height - 1 + padding - ry) // stride  # the phase's last output row, b1
        last_x = (width - 1 + padding - rx) // stride
        if last_y < first_y or last_x < first_x:
            continue
        rows_out, cols_out = last_y - first_y + 1, last_x - first_x + 1
        # dy rows b - T_y + 1 + u for b in [b0, b1], u < size: zero outside dy.
        window = empty((n_images, rows_out + phase.size - 1, cols_out + phase.size - 1, filters))
        window.fill(0.0)
        top, left = first_y - ty + 1, first_x - tx + 1
        y0, y1 = max(top, 0), min(top + window.shape[1], out_h)
        x0, x1 = max(left, 0), min(left + window.shape[2], out_w)
        if y0 < y1 and x0 < x1:
            window[:, y0 - top : y1 - top, x0 - left : x1 - left] = dz[:, y0:y1, x0:x1]
        part = conv2d_gemm(window, phase.packed, bias, channels, phase.size, 1, 0, 0, lanes=lanes, empty=empty)
        i0, j0 = stride * first_y + ry - padding, stride * first_x + rx - padding
        dx[:, i0 : i0 + stride * rows_out : stride, j0 : j0 + stride * cols_out : stride] += part
    return dx
