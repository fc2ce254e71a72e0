"""Winograd F(2x2, 3x3) for plain (one group) 3x3, stride 1, padding 1 convolutions in NHWC:
2.25x fewer multiplies than the direct GEMM (kern/cpu/gemm.py), which runs close to the host's
sgemm limit, so this is the way to go faster on 3x3 layers. Training runs both the forward
pass and the input gradient through it (that gradient is a 3x3 stride-1 convolution of dz
with the turned weights: kern/cpu/conv.py).

The same algebra as winograd.py (Lavin and Gray, 2015): per 2x2 tile of outputs,
    Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A
but in the backend's own layout, channels-last: the input transform runs on 8 channels at a
time in vector lanes (channels are contiguous), the 16 products per tile are 16 GEMMs
(tiles x channels) by (channels x filters) on gemm.py's 6 x 16 register tile, and the output
transform runs on 8 filters at a time. Per job (JOB_TILES tiles, image after image) all
three stay in cache. Every output is one thread's sum in one order: results do not depend on
the thread count.

The weight gradient stays on the direct GEMM (wgrad.py): a Winograd one (dL/dU = sum over
tiles of V * A dY A^T, then G^T dL/dU G) was built and measured at 0.8-1.3x the direct one's
time on cifar.cfg's and darknet19's layers (its GEMMs over tiles ran at 40-55 GFLOP/s, and
7 x 7 maps waste a quarter of their tiles): not kept.
"""

import numba
import numpy as np
from numba import njit, prange

from kern.cpu.activation import RELU, finish_outputs, rectify8
from kern.cpu.buffers import Empty, new_array
from kern.cpu.conv import pad_images, zero_border
from kern.cpu.gemm import TILE_M, TILE_P
from kern.cpu.simd import (
    add8,
    aligned_empty,
    broadcast8,
    fma8,
    lane8,
    load8,
    output_array,
    splat8,
    store8,
    sub8,
)

# Below 64 input channels the transforms cost what the products save (16 -> 64 on 14 x 14: 47
# against the direct GEMM's 54 GFLOP/s; 128 -> 128 on 28 x 28: 113 against 72, effective;
# batch 32 and 128, AMD EPYC Zen 4, 1 thread).
MIN_CHANNELS = 64
JOB_TILES = 64  # 2x2 tiles per job, image after image: U, read per job, is reused by more of them
JOBS_PER_THREAD = 4  # at least: a map of few tiles is split over U's panels too


def fits(ksize: int, stride: int, padding: int, groups: int, channels: int) -> bool:
    """3x3, stride 1, padding 1, one group, input channels in whole vectors and enough of them
    to pay for the transforms."""
    shape = ksize == 3 and stride == 1 and padding == 1 and groups == 1
    return shape and channels % 8 == 0 and channels >= MIN_CHANNELS


def pack_weights(weights: np.ndarray, turned: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """OIHW 3x3 weights -> (16, F/16 rounded up, C, 16): U = G g G^T per filter and channel,
    each position's filters in panels of 16 (zeros past F), as the GEMMs read them. turned:
    the weights of the input gradient's convolution instead (filters and channels swapped,
    each 3x3 rotated by 180 degrees), packed without making them. Training packs after every
    update: NumPy's whole-array version took 0.35 s of a 1.9 s darknet19 step (batch 8, one
    thread); this one runs on every thread. out: an earlier pack of weights of this shape, to
    pack into (a new array's first touch, 33 MB for 512 -> 1024, cost 9 of a 21 ms pack)."""
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    filters, channels = (weights.shape[1], weights.shape[0]) if turned else weights.shape[:2]
    panels = -(-filters // TILE_M)
    shape = (16, panels, channels, TILE_M)
    if out is None or out.shape != shape:
        out = aligned_empty(16 * panels * channels * TILE_M).reshape(shape)
    if filters % TILE_M:
        out[:, panels - 1, :, filters % TILE_M :] = 0.0
    _pack(weights, turned, filters, channels, out)
    return out


@njit(parallel=True, cache=True)
def _pack(weights, turned, filters, channels, out):
    """out[4i + j, f // 16, c, f % 16] = (G g G^T)[i, j] for g the 3x3 of filter f and channel
    c, G's rows (1, 0, 0), (1/2)(1, 1, 1), (1/2)(1, -1, 1), (0, 0, 1): on the rows of g, then
    on its columns, in float32, the sums in that order (as the NumPy version did)."""
    half = np.float32(0.5)
    panels = out.shape[1]
    for panel in prange(panels):  # a panel's 16 lanes of a channel: one cache line of each position
        g = np.empty((3, 3), np.float32)
        t = np.empty((4, 3), np.float32)
        for c in range(channels):
            for lane in range(min(TILE_M, filters - panel * TILE_M)):
                f = panel * TILE_M + lane
                for ky in range(3):
                    for kx in range(3):
                        g[ky, kx] = weights[c, f, 2 - ky, 2 - kx] if turned else weights[f, c, ky, kx]
                for kx in range(3):
                    t[0, kx] = g[0, kx]
                    t[1, kx] = (g[0, kx] + g[1, kx] + g[2, kx]) * half
                    t[2, kx] = (g[0, kx] - g[1, kx] + g[2, kx]) * half
                    t[3, kx] = g[2, kx]
                for i in range(4):
                    out[4 * i, panel, c, lane] = t[i, 0]
                    out[4 * i + 1, panel, c, lane] = (t[i, 0] + t[i, 1] + t[i, 2]) * half
                    out[4 * i + 2, panel, c, lane] = (t[i, 0] - t[i, 1] + t[i, 2]) * half
                    out[4 * i + 3, panel, c, lane] = t[i, 2]


@njit(inline="always", cache=True)
def _transform_input(x_flat, at, row, pixel, channels, v, v_at, pos_step):
    """V[pos] at v_at + pos * pos_step = (B^T d B)[pos] for the 4x4 tile of x at `at` (row and
    pixel strides in floats), 8 channels at a time."""
    for c in range(0, channels, 8):
        d00 = load8(x_flat, at + c)
        d01 = load8(x_flat, at + pixel + c)
        d02 = load8(x_flat, at + 2 * pixel + c)
        d03 = load8(x_flat, at + 3 * pixel + c)
        r = at + row
        d10, d11 = load8(x_flat, r + c), load8(x_flat, r + pixel + c)
        d12, d13 = load8(x_flat, r + 2 * pixel + c), load8(x_flat, r + 3 * pixel + c)
        r += row
        d20, d21 = load8(x_flat, r + c), load8(x_flat, r + pixel + c)
        d22, d23 = load8(x_flat, r + 2 * pixel + c), load8(x_flat, r + 3 * pixel + c)
        r += row
        d30, d31 = load8(x_flat, r + c), load8(x_flat, r + pixel + c)
        d32, d33 = load8(x_flat, r + 2 * pixel + c), load8(x_flat, r + 3 * pixel + c)
        # B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3
        a0, a1, a2, a3 = sub8(d00, d20), sub8(d01, d21), sub8(d02, d22), sub8(d03, d23)
        b0, b1, b2, b3 = add8(d10, d20), add8(d11, d21), add8(d12, d22), add8(d13, d23)
        e0, e1, e2, e3 = sub8(d20, d10), sub8(d21, d11), sub8(d22, d12), sub8(d23, d13)
        f0, f1, f2, f3 = sub8(d10, d30), sub8(d11, d31), sub8(d12, d32), sub8(d13, d33)
        # ... then B on the right: the columns the same way.
        q = v_at + c
        _store_row(v, q, pos_step, a0, a1, a2, a3)
        _store_row(v, q + 4 * pos_step, pos_step, b0, b1, b2, b3)
        _store_row(v, q + 8 * pos_step, pos_step, e0, e1, e2, e3)
        _store_row(v, q + 12 * pos_step, pos_step, f0, f1, f2, f3)


@njit(inline="always", cache=True)
def _store_row(v, at, pos_step, r0, r1, r2, r3):
    """One row of B^T d times B: positions r0 - r2, r1 + r2, r2 - r1, r1 - r3."""
    store8(v, at, sub8(r0, r2))
    store8(v, at + pos_step, add8(r1, r2))
    store8(v, at + 2 * pos_step, sub8(r2, r1))
    store8(v, at + 3 * pos_step, sub8(r1, r3))


@njit(parallel=True, cache=True)
def conv_winograd(x, u, bias, act, out, q, residual, residual_act, job_tiles, panel_groups, scratch):
    """x (N, H + 2 + H % 2, W + 2 + W % 2, C) zero-padded (one more row/column where H or W is
    odd, so every tile reads 4 x 4); u from pack_weights; out (N, H + 2q, W + 2q, F), written
    inside its border of q (a linked next layer's padding, left as it is) =
    act(conv + bias), then residual_act(that + residual (N, H, W, F)) where residual_act >= 0.
    A job takes job_tiles tiles and one of panel_groups runs of U's panels (a small map has too
    few tiles to keep every thread busy: 14 x 14 is 49). scratch: (threads, V's and M's
    floats), a row per worker thread (numba.get_thread_id): allocated once per call, not per
    job (a job's V of 0.5-2 MB, mapped and unmapped per job, faulted its pages in every time)."""
    n_images, x_h, x_w, channels = x.shape
    _, padded_h, padded_w, filters = out.shape
    out_h, out_w = padded_h - 2 * q, padded_w - 2 * q
    _, panels, _, _ = u.shape
    x_flat, u_flat = x.reshape(-1), u.reshape(-1)
    tiles_x = (out_w + 1) // 2
    per_image = (out_h + 1) // 2 * tiles_x
    total = n_images * per_image
    row, pixel = x_w * channels, channels
    panel_floats = channels * TILE_M
    per_group = (panels + panel_groups - 1) // panel_groups
    for job in prange((total + job_tiles - 1) // job_tiles * panel_groups):
        first = job // panel_groups * job_tiles
        first_panel = job % panel_groups * per_group
        tiles = min(job_tiles, total - first)
        # One line off a multiple of 4 KB between positions (16 store streams in one L1 set
        # made the lane kernel's transform 2-4x slower).
        pos_step = tiles * channels + 16
        mine = scratch[numba.get_thread_id()]
        v = mine[: 16 * pos_step]
        m = mine[16 * (job_tiles * channels + 16) :]
        for t in range(tiles):
            n, within = (first + t) // per_image, (first + t) % per_image
            at = ((n * x_h + 2 * (within // tiles_x)) * x_w + 2 * (within % tiles_x)) * channels
            _transform_input(x_flat, at, row, pixel, channels, v, t * channels, pos_step)
        last = tiles - 1
        for panel in range(first_panel, min(first_panel + per_group, panels)):
            for pos in range(16):
                w_at = (pos * panels + panel) * panel_floats
                for t in range(0, tiles, TILE_P):
                    s0 = pos * pos_step + t * channels
                    s1 = pos * pos_step + min(t + 1, last) * channels
                    s2 = pos * pos_step + min(t + 2, last) * channels
                    s3 = pos * pos_step + min(t + 3, last) * channels
                    s4 = pos * pos_step + min(t + 4, last) * channels
                    s5 = pos * pos_step + min(t + 5, last) * channels
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = splat8(0.0)
                    for c in range(channels):
                        w0 = load8(u_flat, w_at + c * TILE_M)
                        w1 = load8(u_flat, w_at + c * TILE_M + 8)
                        xv = broadcast8(v, s0 + c)
                        c00, c01 = fma8(xv, w0, c00), fma8(xv, w1, c01)
                        xv = broadcast8(v, s1 + c)
                        c10, c11 = fma8(xv, w0, c10), fma8(xv, w1, c11)
                        xv = broadcast8(v, s2 + c)
                        c20, c21 = fma8(xv, w0, c20), fma8(xv, w1, c21)
                        xv = broadcast8(v, s3 + c)
                        c30, c31 = fma8(xv, w0, c30), fma8(xv, w1, c31)
                        xv = broadcast8(v, s4 + c)
                        c40, c41 = fma8(xv, w0, c40), fma8(xv, w1, c41)
                        xv = broadcast8(v, s5 + c)
                        c50, c51 = fma8(xv, w0, c50), fma8(xv, w1, c51)
                    _store_m(m, t, pos, c00, c01)
                    if t + 1 <= last:
                        _store_m(m, t + 1, pos, c10, c11)
                    if t + 2 <= last:
                        _store_m(m, t + 2, pos, c20, c21)
                    if t + 3 <= last:
                        _store_m(m, t + 3, pos, c30, c31)
                    if t + 4 <= last:
                        _store_m(m, t + 4, pos, c40, c41)
                    if t + 5 <= last:
                        _store_m(m, t + 5, pos, c50, c51)
            _transform_output(m, first, tiles, per_image, tiles_x, panel, filters, bias, act, out, q, residual,
                              residual_act)


@njit(inline="always", cache=True)
def _store_m(m, t, pos, a, b):
    at = (t * 16 + pos) * TILE_M
    store8(m, at, a)
    store8(m, at + 8, b)


@njit(inline="always", cache=True)
def _transform_output(m, first, tiles, per_image, tiles_x, panel, filters, bias, act, out, q, residual,
                      residual_act):
    """Y = A^T M A for each tile's 16 filters of `panel`, then bias, activation, residual."""
    o = panel * TILE_M
    count = min(TILE_M, filters - o)
    _, padded_h, padded_w, _ = out.shape
    # Darknet's and Caffe's layers: a whole panel, linear, leaky or relu, their shortcut or none.
    plain = count == TILE_M and act <= RELU and residual_act <= RELU
    for t in range(tiles):
        n, within = (first + t) // per_image, (first + t) % per_image
        oy, ox = 2 * (within // tiles_x), 2 * (within % tiles_x)
        for half in range(0, TILE_M, 8):
            at = t * 16 * TILE_M + half
            step = TILE_M  # from position to position
            m00, m01, m02, m03 = _four(m, at, step)
            m10, m11, m12, m13 = _four(m, at + 4 * step, step)
            m20, m21, m22, m23 = _four(m, at + 8 * step, step)
            m30, m31, m32, m33 = _four(m, at + 12 * step, step)
            s0, s1 = add8(add8(m00, m10), m20), add8(add8(m01, m11), m21)
            s2, s3 = add8(add8(m02, m12), m22), add8(add8(m03, m13), m23)
            d0, d1 = sub8(sub8(m10, m20), m30), sub8(sub8(m11, m21), m31)
            d2, d3 = sub8(sub8(m12, m22), m32), sub8(sub8(m13, m23), m33)
            p00, p01 = add8(add8(s0, s1), s2), sub8(sub8(s1, s2), s3)
            p10, p11 = add8(add8(d0, d1), d2), sub8(sub8(d1, d2), d3)
            if plain and oy + 1 < padded_h - 2 * q and ox + 1 < padded_w - 2 * q:
                # The tile inside the map: four stores in a row, each inlined with one max at most.
                f0 = o + half
                _store_rectified(out, n, oy + q, ox + q, f0, p00, bias, act, residual, residual_act, q)
                _store_rectified(out, n, oy + q, ox + q + 1, f0, p01, bias, act, residual, residual_act, q)
                _store_rectified(out, n, oy + q + 1, ox + q, f0, p10, bias, act, residual, residual_act, q)
                _store_rectified(out, n, oy + q + 1, ox + q + 1, f0, p11, bias, act, residual, residual_act, q)
                continue
            # Else (logistic, tanh, a partial panel, the map's edge) the four pixels back into M
            # (read already) and one store in a loop, finished by a call: four inlined copies of
            # the whole finish (every activation, the residual, a partial panel) made this
            # kernel take 31 s to compile.
            store8(m, at, p00)
            store8(m, at + step, p01)
            store8(m, at + 2 * step, p10)
            store8(m, at + 3 * step, p11)
            finish = (filters, bias, act, q, residual, residual_act)
            for k in range(4):
                _store_pixel(out, n, oy + k // 2, ox + k % 2, o + half, load8(m, at + k * step), finish)


@njit(inline="always", cache=True)
def _store_rectified(out, n, y, x, first, sums, bias, act, residual, residual_act, q):
    """Filters first .. first + 7 of out[n, y, x]: + bias, the activation, then + the residual
    (at y - q, x - q) and its activation where residual_act >= 0; act and residual_act linear,
    leaky or relu (activate8's operations: the same bits)."""
    value = rectify8(add8(sums, load8(bias, first)), act)
    if residual_act >= 0:
        value = rectify8(add8(value, load8(residual[n, y - q, x - q], first)), residual_act)
    store8(out[n, y, x], first, value)


@njit(inline="always", cache=True)
def _four(m, at, step):
    return load8(m, at), load8(m, at + step), load8(m, at + 2 * step), load8(m, at + 3 * step)


@njit(inline="always", cache=True)
def _store_pixel(out, n, y, x, first, sums, finish):
    """Filters first .. first + 7 (those below `filters`) of pixel (y, x), if the pixel is
    inside the output (at (y + q, x + q) of out): stored, then bias, activation and the
    residual applied in place by activation.finish_outputs (finish: filters, bias, act, q,
    residual, residual_act)."""
    filters, bias, act, q, residual, residual_act = finish
    _, padded_h, padded_w, _ = out.shape
    present = min(8, filters - first)  # none in the upper half of a panel of 8 or fewer
    if y >= padded_h - 2 * q or x >= padded_w - 2 * q or present <= 0:
        return
    target = out[n, y + q, x + q]
    if present == 8:
        store8(target, first, sums)
    else:
        for j in range(present):
            target[first + j] = lane8(sums, j)
    finish_outputs(target, first, bias, first, present, act, residual[n, y, x], residual_act)


def conv2d_winograd(
    x: np.ndarray, u: np.ndarray, bias: np.ndarray, filters: int, act: int,
    residual: np.ndarray | None = None, residual_act: int = -1, out: np.ndarray | None = None,
    input_padded: bool = False, out_padding: int = 0, empty: Empty = new_array,
) -> np.ndarray:
    """x (N, H, W, C), u from pack_weights -> act(conv3x3(x) + bias) (N, H, W, filters), and
    residual_act(that + residual) where a residual is given. As the direct GEMM
    (conv.conv2d_gemm) for linked layers: with input_padded, x comes inside its zero border
    of 1 (N, H + 2, W + 2, C), read as it is where H and W are even; with out_padding q the
    output is written inside a zero border of q, (N, H + 2q, W + 2q, filters). empty: where
    new arrays come from (kern/cpu/buffers.py)."""
    n_images, height, width, channels = x.shape
    if input_padded:
        height, width = height - 2, width - 2
    if input_padded and height % 2 == 0 and width % 2 == 0:
        padded = x  # the border the convolution before wrote, tiles and all
    else:
        # A zero border of 1, and a row and column more where H or W is odd: whole tiles.
        padded = empty((n_images, height + 2 + height % 2, width + 2 + width % 2, channels))
        pad_images(x[:, 1 : height + 1, 1 : width + 1] if input_padded else x, 1, padded)
    q = out_padding
    shape = (n_images, height + 2 * q, width + 2 * q, filters)
    out = output_array(shape, empty(shape) if out is None else out)
    if q:
        zero_border(out, q)
    if residual is None:
        residual, residual_act = out, -1
    tiles = n_images * ((height + 1) // 2) * ((width + 1) // 2)
    job_tiles = min(JOB_TILES, tiles)  # a small map's scratch as small (it is mapped anew per call)
    floats = 16 * (job_tiles * channels + 16) + job_tiles * 16 * TILE_M  # V, then M
    scratch = empty((numba.config.NUMBA_NUM_THREADS, floats))
    jobs = -(-tiles // job_tiles)
    panel_groups = min(u.shape[1], -(-JOBS_PER_THREAD * numba.get_num_threads() // jobs))
    conv_winograd(padded, u, bias, act, out, q, residual, residual_act, job_tiles, panel_groups, scratch)
    return out

