"""The CUDA backend: hand-written CUDA C kernels (kern/cuda/*.cu) compiled by NVRTC through
CuPy. cupy is imported here only; activations stay on the GPU between layers (NCHW float32).

Importing this module without cupy, or without a GPU, raises ImportError with the reason;
kern.get_backend turns that into one line for the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kern.cuda.sources import DEFINES, FOLDER, SOURCES, compile_options
from kern.params import activation_code, conv_output_size, fold_batchnorm, maxpool_output_size

try:
    import cupy
except ImportError:
    raise ImportError(
        "cupy is not installed (pip install cupy-cuda12x for CUDA 12, or cupy-cuda13x for CUDA 13)"
    ) from None

try:
    _GPUS = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError:
    _GPUS = 0
if _GPUS == 0:
    raise ImportError("no CUDA GPU found")

BLOCK = 256  # threads per block of the one-thread-per-output kernels
GEMM_MIN_FILTERS = 16  # fewer filters per group: the direct kernel (a 64-row tile would idle)
# conv2d_implicit_gemm_128 (128 x 128 tiles) where both tiles are mostly full; else kernel 2.
BIG_MIN_FILTERS, BIG_MIN_PIXELS = 64, 128


def _grid(count: int) -> tuple[int]:
    return ((count + BLOCK - 1) // BLOCK,)


@dataclass(frozen=True)
class CudaConv:
    weights: cupy.ndarray  # OIHW, batchnorm folded
    bias: cupy.ndarray
    stride: int
    padding: int
    groups: int
    act: int
    tap_table: cupy.ndarray  # per tap of a group: channel << 16 | ky << 8 | kx (kernel 3)


def _tap_table(weights: np.ndarray) -> cupy.ndarray:
    channels, k = weights.shape[1], weights.shape[2]
    ci, ky, kx = np.meshgrid(np.arange(channels), np.arange(k), np.arange(k), indexing="ij")
    return cupy.asarray(((ci << 16) | (ky << 8) | kx).reshape(-1).astype(np.int32))


class CudaBackend:
    name = "cuda"

    def __init__(self) -> None:
        # Compiled once per backend (and cached on disk by CuPy across runs).
        options = compile_options()
        self._modules = {
            name: cupy.RawModule(code=(FOLDER / name).read_text(), options=options)
            for name in SOURCES
        }

    def _kernel(self, source: str, name: str):
        return self._modules[source].get_function(name)

    def asarray(self, x: np.ndarray) -> cupy.ndarray:
        return cupy.ascontiguousarray(cupy.asarray(x, dtype=cupy.float32))

    def to_numpy(self, x: cupy.ndarray) -> np.ndarray:
        return cupy.asnumpy(x)

    def prepare_conv(self, weights, bias, bn, *, stride, padding, groups, activation) -> CudaConv:
        w, b = fold_batchnorm(weights, bias, bn)
        act = activation_code(activation)
        return CudaConv(cupy.asarray(w), cupy.asarray(b), stride, padding, groups, act, _tap_table(w))

    def conv2d(self, x: cupy.ndarray, conv: CudaConv) -> cupy.ndarray:
        return self._conv(x, conv, None, -1)

    def _conv(self, x: cupy.ndarray, conv: CudaConv, residual: cupy.ndarray | None, res_act: int):
        n, c, h, w = x.shape
        f, _, k, _ = conv.weights.shape
        oh = conv_output_size(h, k, conv.stride, conv.padding)
        ow = conv_output_size(w, k, conv.stride, conv.padding)
        y = cupy.empty((n, f, oh, ow), dtype=cupy.float32)
        args = (x, conv.weights, conv.bias, y, *map(np.int32, (n, c, h, w, f, k, conv.stride,
                conv.padding, conv.groups, oh, ow, conv.act)), y if residual is None else residual,
                np.int32(res_act))
        if f // conv.groups >= BIG_MIN_FILTERS and n * oh * ow >= BIG_MIN_PIXELS:
            grid = (-(-n * oh * ow // 128), -(-(f // conv.groups) // 128), conv.groups)
            self._kernel("conv.cu", "conv2d_implicit_gemm_128")(grid, (256,), (*args, conv.tap_table))
        elif f // conv.groups >= GEMM_MIN_FILTERS:
            grid = (
                -(-n * oh * ow // DEFINES["TILE_N"]),
                -(-(f // conv.groups) // DEFINES["TILE_M"]),
                conv.groups,
            )
            self._kernel("conv.cu", "conv2d_implicit_gemm")(grid, (256,), args)
        else:
            self._kernel("conv.cu", "conv2d_direct")(_grid(y.size), (BLOCK,), args)
        return y

    def conv2d_residual(self, x, conv: CudaConv, residual, *, activation):
        # The shortcut's add and activation in the convolution's store (conv.cu's epilogue).
        return self._conv(x, conv, residual, activation_code(activation))

    def prepare_connected(self, weights, bias, bn, *, activation) -> CudaConv:
        # A connected layer is a 1x1 convolution of the flattened input.
        w, b = fold_batchnorm(weights, bias, bn)
        act = activation_code(activation)
        w = w[:, :, None, None]
        return CudaConv(cupy.asarray(w), cupy.asarray(b), 1, 0, 1, act, _tap_table(w))

    def connected(self, x: cupy.ndarray, fc: CudaConv) -> cupy.ndarray:
        return self.conv2d(x.reshape(x.shape[0], -1, 1, 1), fc)

    def maxpool(self, x, *, size, stride, padding):
        n, c, h, w = x.shape
        oh = maxpool_output_size(h, size, stride, padding)
        ow = maxpool_output_size(w, size, stride, padding)
        y = cupy.empty((n, c, oh, ow), dtype=cupy.float32)
        args = (x, y, *map(np.int32, (n * c, h, w, size, stride, padding, oh, ow)))
        self._kernel("pool.cu", "maxpool")(_grid(y.size), (BLOCK,), args)
        return y

    def avgpool(self, x):
        n, c, h, w = x.shape
        y = cupy.empty((n, c, 1, 1), dtype=cupy.float32)
        self._kernel("pool.cu", "avgpool")((n * c,), (256,), (x, y, np.int32(h * w)))
        return y

    def softmax(self, x, *, groups, temperature):
        y = cupy.empty_like(x)
        width = x.size // (x.shape[0] * groups)
        args = (x, y, np.int32(width), np.float32(temperature))
        self._kernel("elementwise.cu", "softmax_rows")((x.shape[0] * groups,), (256,), args)
        return y

    def shortcut(self, x, source, *, alpha, beta, activation):
        y = cupy.empty_like(x)
        args = (x, source, y, *map(np.int32, x.shape), *map(np.int32, source.shape[1:]),
                np.float32(alpha), np.float32(beta), np.int32(activation_code(activation)))
        self._kernel("elementwise.cu", "shortcut")(_grid(y.size), (BLOCK,), args)
        return y

    def route(self, xs: Sequence[cupy.ndarray]) -> cupy.ndarray:
        n, _, h, w = xs[0].shape
        total = sum(x.shape[1] for x in xs)
        y = cupy.empty((n, total, h, w), dtype=cupy.float32)
        first = 0
        for x in xs:
            args = (x, y, *map(np.int32, (n, x.shape[1], h * w, total, first)))
            self._kernel("elementwise.cu", "copy_channels")(_grid(x.size), (BLOCK,), args)
            first += x.shape[1]
        return y

    def crop(self, x, *, height, width, scale, shift):
        n, c, h, w = x.shape
        y = cupy.empty((n, c, height, width), dtype=cupy.float32)
        args = (x, y, *map(np.int32, (n * c, h, w, height, width)), np.float32(scale), np.float32(shift))
        self._kernel("elementwise.cu", "crop")(_grid(y.size), (BLOCK,), args)
        return y

    def activate(self, x, activation):
        y = cupy.empty_like(x)
        args = (x, y, np.int64(x.size), np.int32(activation_code(activation)))
        self._kernel("elementwise.cu", "activate_all")(_grid(x.size), (BLOCK,), args)
        return y
