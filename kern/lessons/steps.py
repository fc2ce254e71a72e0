"""The ladder's steps: each runs one convolution layer its own way.

A step is `prepare(problem) -> (run, to_nchw)`: prepare does what a library does once, at load
(packing weights, changing the input's layout); `run()` is what is timed; `to_nchw(run())`
gives the result as NCHW float32 for the check.

Steps the library keeps call its real functions (kern/ref, kern/cpu, kern/cuda); steps it does
not keep (a matrix multiply as three loops, im2row with a plain GEMM, Winograd for one group)
are written here, as plainly as they can be. docs/lessons/ explains each step; every step's
result is checked against the float64 definition by kern/lessons/__main__.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import njit, prange

from kern.cpu import conv as cpu_conv
from kern.cpu.gemm import conv_gemm, pack_panels
from kern.params import conv_output_size
from kern.ref import conv2d_loops, im2col


@dataclass
class Row:
    """One step's line of the ladder (ladder.json's rows)."""

    step: int
    title: str
    where: str
    layer: str
    ms: float | None  # None: not timed (cudasim)
    gflops: float | None
    percent_of_sgemm: float | None
    speedup: float | None  # over the step before on the same layer (step 8: over step 6's GEMM)
    max_error: float
    note: str
    intensity: float  # multiply-add FLOPs per byte of memory traffic (the roofline's x)
    per_layer: list | None = None  # step 21: [layer, forward ms, backward ms] per layer


def max_error(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference, relative to the largest expected value (inf: wrong shape or
    a value that is not finite)."""
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))


@dataclass(frozen=True)
class Problem:
    """One convolution: x (N, C, H, W), weights (F, C/groups, K, K), zero bias, linear."""

    name: str
    x: np.ndarray
    weights: np.ndarray
    stride: int
    padding: int
    groups: int

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.x.shape
        f, _, k, _ = self.weights.shape
        s, q = self.stride, self.padding
        return (n, f, conv_output_size(h, k, s, q), conv_output_size(w, k, s, q))

    @property
    def macs(self) -> int:
        _, group_channels, k, _ = self.weights.shape
        return int(np.prod(self.out_shape)) * group_channels * k * k

    @property
    def options(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, groups=self.groups, activation="linear")

    def rows(self, count: int) -> Problem:
        """The same layer cut to its first `count` output rows (what step 1 has time for)."""
        _, _, h, _ = self.x.shape
        k = self.weights.shape[2]
        needed = min(h, (count - 1) * self.stride + k - self.padding)
        cut = self.x[:, :, :needed]
        return Problem(self.name, cut, self.weights, self.stride, self.padding, self.groups)


def gpu_or_cudasim(make: Callable[[str], Any], what: str) -> tuple[Any, bool]:
    """(make("cuda"), True) where a GPU is, else (make("cudasim"), False); (None, False) and
    the reason said when neither can run."""
    from kern.errors import KernError

    for name in ("cuda", "cudasim"):
        try:
            return make(name), name == "cuda"
        except KernError as error:
            reason = error
    print(f"{what} skipped: {reason}", file=sys.stderr)
    return None, False


def resized_cfg(cfg_text: str, size: int) -> str:
    """A cfg's text with its [net] width and height set to `size`."""
    lines = []
    for line in cfg_text.splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key}={size}" if key in ("width", "height") else line)
    return "\n".join(lines) + "\n"


# ---- steps the library does not keep --------------------------------------------------------


@njit(cache=True)
def matmul_loops(a, b):
    """(M, K) @ (K, N) as three loops, one thread: the textbook order i, j, k."""
    m, depth = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        for j in range(n):
            total = np.float32(0.0)
            for k in range(depth):
                total += a[i, k] * b[k, j]
            out[i, j] = total
    return out


def conv_im2col_loops(p: Problem) -> Prepared:
    """Step 2: every image unfolded into its columns (kern.ref.im2col), then one matrix
    multiply per image: (F x taps) @ (taps x pixels). Groups = 1."""
    n, f, oh, ow = p.out_shape
    w = np.ascontiguousarray(p.weights.reshape(f, -1))

    def run() -> np.ndarray:
        out = np.empty((n, f, oh * ow), dtype=np.float32)
        for i in range(n):
            out[i] = matmul_loops(w, im2col(p.x[i], p.weights.shape[2], p.stride, p.padding))
        return out

    return run, lambda out: out.reshape(n, f, oh, ow)


def im2row(x_nhwc: np.ndarray, ksize: int, stride: int, padding: int) -> np.ndarray:
    """Channels-last im2col: one row of taps (ky, kx, c) per output pixel, (N*OH*OW, K*K*C)."""
    n, h, w, c = x_nhwc.shape
    oh, ow = conv_output_size(h, ksize, stride, padding), conv_output_size(w, ksize, stride, padding)
    padded = np.pad(x_nhwc, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = np.empty((n, oh, ow, ksize, ksize, c), dtype=np.float32)
    for ky in range(ksize):
        for kx in range(ksize):
            ys = slice(ky, ky + stride * (oh - 1) + 1, stride)
            xs = slice(kx, kx + stride * (ow - 1) + 1, stride)
            rows[:, :, :, ky, kx] = padded[:, ys, xs]
    return rows.reshape(n * oh * ow, ksize * ksize * c)


@njit(parallel=True, fastmath=True, cache=True)
def gemm_plain(rows, weights_t):
    """(P, K) @ (K, F), parallel over pixels, loop order p, k, f: the innermost loop runs
    along contiguous filters, which LLVM turns into vector instructions by itself."""
    pixels, depth = rows.shape
    filters = weights_t.shape[1]
    out = np.zeros((pixels, filters), dtype=np.float32)
    for p in prange(pixels):
        for k in range(depth):
            v = rows[p, k]
            for f in range(filters):
                out[p, f] += v * weights_t[k, f]
    return out


def _taps_last(weights: np.ndarray) -> np.ndarray:
    """OIHW -> (F, K*K*C) in the (ky, kx, c) order of im2row."""
    return np.ascontiguousarray(weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1))


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nchw(x: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    n, f, oh, ow = shape
    return np.ascontiguousarray(x.reshape(n, oh, ow, f).transpose(0, 3, 1, 2))


def conv_im2row_plain(p: Problem) -> Prepared:
    """Step 4: channels-last rows of taps, times the weights, by a plain parallel GEMM."""
    x, weights_t = nhwc(p.x), np.ascontiguousarray(_taps_last(p.weights).T)

    def run() -> np.ndarray:
        return gemm_plain(im2row(x, p.weights.shape[2], p.stride, p.padding), weights_t)

    return run, lambda out: nchw(out, p.out_shape)


def conv_im2row_microkernel(p: Problem) -> Prepared:
    """Step 5: the same rows, multiplied by kern's register-tiled micro-kernel (gemm.conv_gemm,
    given the rows as a 1 x P image of K*K*C channels and the weights in panels of 16)."""
    x, f = nhwc(p.x), p.weights.shape[0]
    panels, bias = pack_panels(_taps_last(p.weights)[np.newaxis]), np.zeros(f, np.float32)

    def run() -> np.ndarray:
        rows = im2row(x, p.weights.shape[2], p.stride, p.padding)
        image = rows.reshape(1, 1, rows.shape[0], rows.shape[1])
        out = np.empty((1, 1, rows.shape[0], f), dtype=np.float32)
        conv_gemm(image, panels, bias, 0, 1, 1, out, 1, 0, out, -1)
        return out

    return run, lambda out: nchw(out, p.out_shape)


# Winograd F(2x2, 3x3) (Lavin and Gray, 2015): Y = A^T [U * V] A with U = G g G^T per filter
# and channel, V = B^T d B per 4x4 input tile and channel; * elementwise, summed over channels.
WINOGRAD_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
WINOGRAD_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def conv_winograd(p: Problem) -> Prepared:
    """Step 7, for one group, 3x3, stride 1: the input cut into 4x4 tiles overlapping by 2,
    each transformed (V = B^T d B: 32 additions); then, for each of the 16 positions of a
    tile, one matrix multiply over the channels, (F x C) @ (C x tiles); then each 4x4 back to
    2x2 outputs (A^T M A: 24 additions). 16 multiplies per 4 outputs and channel where the
    direct way does 36. The transforms are NumPy passes over whole arrays and the products
    NumPy's (a BLAS): the point here is the count of multiplies, and what the passes cost."""
    n, c, h, w = p.x.shape
    f = p.weights.shape[0]
    _, _, oh, ow = p.out_shape
    th, tw = -(-oh // 2), -(-ow // 2)
    # U = G g G^T, once per filter and channel (at load time): (16 positions, F, C).
    u = np.einsum("ij,fcjk,lk->ilfc", WINOGRAD_G, p.weights, WINOGRAD_G).reshape(16, f, c).astype(np.float32)

    def run() -> np.ndarray:
        padded = np.zeros((c, n, 2 * th + 2, 2 * tw + 2), np.float32)
        padded[:, :, p.padding : p.padding + h, p.padding : p.padding + w] = p.x.transpose(1, 0, 2, 3)
        d = [[padded[:, :, i : i + 2 * th : 2, j : j + 2 * tw : 2] for j in range(4)] for i in range(4)]
        rows = [_b_t(*[d[i][j] for i in range(4)]) for j in range(4)]  # rows[j][i] = (B^T d)[i][j]
        v = np.stack([b for i in range(4) for b in _b_t(*[rows[j][i] for j in range(4)])])
        m = np.matmul(u, v.reshape(16, c, -1)).reshape(4, 4, f, n, th, tw)
        columns = [_a_t(*[m[i, j] for i in range(4)]) for j in range(4)]  # columns[j][a] = (A^T M)[a][j]
        return np.stack([np.stack(_a_t(*[columns[j][a] for j in range(4)])) for a in range(2)])

    def to_nchw(y: np.ndarray) -> np.ndarray:  # y[a, b] (f, n, th, tw): output (2t + a, 2s + b)
        full = y.transpose(3, 2, 4, 0, 5, 1).reshape(n, f, 2 * th, 2 * tw)
        return np.ascontiguousarray(full[:, :, :oh, :ow], dtype=np.float32)

    return run, to_nchw


def _b_t(d0, d1, d2, d3):
    """B^T applied to four rows (or columns) of a tile: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _a_t(m0, m1, m2, m3):
    """A^T applied to four rows (or columns): (m0 + m1 + m2, m1 - m2 - m3)."""
    return m0 + m1 + m2, m1 - m2 - m3


# ---- the ladder -------------------------------------------------------------------------------


Prepared = tuple[Callable[[], Any], Callable[[Any], np.ndarray]]


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    page: str  # docs/lessons/<page>.md
    device: str  # "cpu" or "cuda"
    prepare: Callable[[Problem], Prepared] | None  # CPU steps; CUDA steps run in __main__
    code: str  # the function it runs
    inner_loop: str  # the innermost loop's arithmetic per value loaded
    extra_bytes: Callable[[Problem], int] = lambda p: 0  # memory traffic beyond x, w and y
    layer: str = "main"  # "main": the chosen layer; "grouped": ResNeXt's grouped layer


def _im2col_bytes(p: Problem) -> int:
    """The unfolded matrix, written once and read once."""
    _, _, oh, ow = p.out_shape
    return 2 * 4 * p.x.shape[0] * oh * ow * p.weights.shape[1] * p.weights.shape[2] ** 2


def _winograd_bytes(p: Problem) -> int:
    """V and M (16 positions per tile), each written and read."""
    n, f, oh, ow = p.out_shape
    tiles = n * -(-oh // 2) * -(-ow // 2)
    return 2 * 4 * 16 * tiles * (p.x.shape[1] + f)


def cpu_direct(p: Problem) -> Prepared:
    bias = np.zeros(p.weights.shape[0], np.float32)
    return (lambda: cpu_conv.conv2d_direct(p.x, p.weights, bias, p.stride, p.padding, p.groups, 0)), _same


def cpu_gemm(p: Problem, threads: int | None = None) -> Prepared:
    """kern's CPU convolution as the backend runs it (conv.conv2d_gemm: packed panels,
    channels-last, taps read where they lie; grouped layers in vector lanes where they fit).
    threads: Numba's worker count for this backend's calls."""
    from kern import get_backend

    backend = get_backend("cpu", threads=threads or numba.config.NUMBA_NUM_THREADS)
    prepared = backend.prepare_conv(p.weights, np.zeros(p.weights.shape[0], np.float32), None, **p.options)
    x = backend.asarray(p.x)
    return (lambda: backend.conv2d(x, prepared)), backend.to_numpy


def cpu_gemm_merged_groups(p: Problem) -> Prepared:
    """A grouped layer on step 6's GEMM (groups merged into 16-filter panels, zeros between
    them): what step 8 is measured against."""
    f = p.weights.shape[0]
    packed, bias, x = cpu_conv.pack_weights(p.weights, p.groups), np.zeros(f, np.float32), nhwc(p.x)

    def run() -> np.ndarray:
        return cpu_conv.conv2d_gemm(x, packed, bias, f, p.weights.shape[2], p.stride, p.padding, 0)

    return run, lambda y: np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def definition(p: Problem) -> Prepared:
    return (lambda: conv2d_loops(p.x, p.weights, p.stride, p.padding, p.groups)), _same


def _same(out: np.ndarray) -> np.ndarray:
    return out


CPU_STEPS = (
    Step(
        1,
        "the definition: seven loops",
        "01-seven-loops",
        "cpu",
        definition,
        "kern/ref/conv.py: conv2d_loops",
        "per multiply-add: 2 loads of Python objects",
    ),
    Step(
        2,
        "im2col + matrix multiply",
        "02-im2col",
        "cpu",
        conv_im2col_loops,
        "kern/ref/conv.py: im2col; kern/lessons/steps.py: matmul_loops",
        "per multiply-add: 2 loads, one 64 KB past the last",
        _im2col_bytes,
    ),
    Step(
        3,
        "parallel loops in Numba",
        "03-parallel-loops",
        "cpu",
        cpu_direct,
        "kern/cpu/conv.py: conv2d_direct",
        "per multiply-add: 2 scalar loads, on every core",
    ),
    Step(
        4,
        "im2row + a plain GEMM",
        "04-im2row-gemm",
        "cpu",
        conv_im2row_plain,
        "kern/lessons/steps.py: im2row, gemm_plain",
        "per 8 multiply-adds (one vector): 2 loads and a store",
        _im2col_bytes,
    ),
    Step(
        5,
        "register tiles and SIMD",
        "05-micro-kernel",
        "cpu",
        conv_im2row_microkernel,
        "kern/cpu/gemm.py: conv_gemm, on im2row's rows",
        "per 96 multiply-adds (12 vector FMAs): 2 vector loads, 6 broadcasts",
        _im2col_bytes,
    ),
    Step(
        6,
        "blocking, packing, channels-last, no im2row",
        "06-no-im2row",
        "cpu",
        cpu_gemm,
        "kern/cpu/conv.py: conv2d_gemm",
        "as step 5, with the taps read where they lie",
    ),
    Step(
        7,
        "Winograd F(2x2, 3x3)",
        "07-winograd",
        "cpu",
        conv_winograd,
        "kern/lessons/steps.py: conv_winograd (kern/cpu/winograd.py: in vector lanes)",
        "16 multiplies per 4 outputs and channel instead of 36",
        _winograd_bytes,
    ),
    Step(
        8,
        "grouped convolution in vector lanes",
        "08-grouped-lanes",
        "cpu",
        cpu_gemm,
        "kern/cpu/grouped.py: conv2d_lane_groups",
        "per 96 multiply-adds: 3 input and 4 weight vector loads",
        layer="grouped",
    ),
    Step(
        9,
        "threads: scaling and Amdahl",
        "09-threads",
        "cpu",
        cpu_gemm,
        "kern/cpu/conv.py: conv2d_gemm",
        "as step 6",
    ),
)

# kern/cuda/conv.cu's kernels, launched on the chosen layer through the backend (lessons 10-12).
CUDA_STEPS = (
    Step(
        10,
        "CUDA: one thread per output",
        "10-cuda-direct",
        "cuda",
        None,
        "kern/cuda/conv.cu: conv2d_direct",
        "per multiply-add: 2 loads (global memory, through the caches)",
    ),
    Step(
        11,
        "CUDA: shared-memory tiles (implicit GEMM)",
        "11-cuda-shared-tiles",
        "cuda",
        None,
        "kern/cuda/conv.cu: conv2d_implicit_gemm",
        "per 16 multiply-adds: 8 shared-memory loads",
    ),
    Step(
        12,
        "CUDA: register tiles, float4, double buffering",
        "12-cuda-register-tiles",
        "cuda",
        None,
        "kern/cuda/conv.cu: conv2d_implicit_gemm_128",
        "per 64 multiply-adds: 16 shared-memory loads",
    ),
    Step(
        13,
        "CUDA: the whole network",
        "13-cuda-network",
        "cuda",
        None,
        "nets/memory.py, kern/cuda/backend.py: capture",
        "fused epilogues, planned memory, one graph launch",
    ),
)
CUDA_KERNELS = {10: "conv2d_direct", 11: "conv2d_implicit_gemm", 12: "conv2d_implicit_gemm_128"}
