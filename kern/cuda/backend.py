"""The CUDA backend: hand-written CUDA C kernels (kern/cuda/*.cu) compiled by NVRTC through
CuPy. cupy is imported here only; activations stay on the GPU between layers (NCHW float32).

Importing this module without cupy, or without a GPU, raises ImportError with the reason;
kern.get_backend turns that into one line for the user.

Planned memory (kern/backend.py): every op takes `out=`, a place in the network's arena that
nets/memory.py chose; a convolution's `x` and `out` may be channel slices of a route's output
(images `strides[0]` apart), so the route has nothing to copy. `capture` records a whole
forward pass as one CUDA graph, replayed with one launch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kern.cuda.sources import DEFINES, INFERENCE_SOURCES, compile_options, source_code
from kern.errors import KernError
from kern.params import (
    activation_code,
    conv_output_size,
    fold_batchnorm,
    maxpool_output_size,
    pair,
)

try:
    import cupy
except ImportError:
    raise ImportError(
        "cupy is not installed (pip install 'kern-nn[cuda12]' for CUDA 12, or 'kern-nn[cuda13]' for CUDA 13)"
    ) from None

try:
    _GPUS = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError:
    _GPUS = 0
if _GPUS == 0:
    raise ImportError("no CUDA GPU found")

BLOCK = 256  # threads per block of the one-thread-per-output kernels
GEMM_MIN_FILTERS = 16  # fewer filters per group: the direct kernel (a 64-row tile would idle)
# conv2d_implicit_gemm_128 (128 x 128 tiles) where both tiles are mostly full; below
# BIG_MIN_PIXELS pixels (a batch of one small map) the split-K kernel; else kernel 2.
BIG_MIN_FILTERS, BIG_MIN_PIXELS = 64, 128
SPLITK_TILE = (16, 32)  # pixels x filters of conv2d_implicit_gemm_splitk's tile


# The implicit GEMMs' block tiles: (pixels, filters).
CONV_TILES = {
    "conv2d_implicit_gemm": (DEFINES["TILE_N"], DEFINES["TILE_M"]),
    "conv2d_implicit_gemm_128": (128, 128),
    "conv2d_implicit_gemm_splitk": SPLITK_TILE,
}
CONV_KERNELS = ("conv2d_direct", *CONV_TILES)


def choose_conv_kernel(pixels: int, group_filters: int) -> str:
    """conv.cu's kernel for a layer: pixels over the whole batch, filters per group."""
    if group_filters < GEMM_MIN_FILTERS:
        return "conv2d_direct"
    if pixels < BIG_MIN_PIXELS:
        return "conv2d_implicit_gemm_splitk"
    return "conv2d_implicit_gemm_128" if group_filters >= BIG_MIN_FILTERS else "conv2d_implicit_gemm"


def _grid(count: int) -> tuple[int]:
    return ((count + BLOCK - 1) // BLOCK,)


@dataclass(frozen=True)
class CudaConv:
    weights: cupy.ndarray  # OIHW, batchnorm folded
    bias: cupy.ndarray
    stride: int
    padding: int | tuple[int, int]  # (pad_h, pad_w) for Caffe's non-square kernels
    groups: int
    act: int
    # Per tap of a group: channel << 12 | ky << 6 | kx (the 128 GEMM and split-K); None where
    # that does not fit an int32 (TAP_CHANNELS channels per group or more, or KH or KW over 64).
    tap_table: cupy.ndarray | None


@dataclass(frozen=True)
class CudaAffine:
    scale: cupy.ndarray
    bias: cupy.ndarray
    slope: cupy.ndarray  # PReLU's below 0 (ones: none)
    act: int


TAP_CHANNELS = 1 << 19  # channel << 12 stays below 2^31 (it wrapped at 2^15 when shifted by 16)
TAP_SIZE = 64


def make_tap_table(weights) -> cupy.ndarray | None:
    """The 128 GEMM's and split-K's table of the taps of OIHW weights (host or device: only
    their shape is read), or None where it does not fit."""
    channels, k_h, k_w = weights.shape[1:]
    if channels >= TAP_CHANNELS or max(k_h, k_w) > TAP_SIZE:
        return None
    ci, ky, kx = np.meshgrid(np.arange(channels), np.arange(k_h), np.arange(k_w), indexing="ij")
    return cupy.asarray(((ci << 12) | (ky << 6) | kx).reshape(-1).astype(np.int32))


def _image_stride(x) -> np.int64:
    """Floats from one image to the next (more than C*H*W for a channel slice)."""
    return np.int64(x.strides[0] // 4)


class CudaBackend:
    name = "cuda"
    planned_memory = True

    def __init__(self, graphs: bool = True, cp_async: bool = False) -> None:
        self.graphs = graphs  # capture() records CUDA graphs; False: it runs as it is
        # Compiled once per backend (and cached on disk by CuPy across runs). cp_async: kernel
        # 3's tiles by cp.async (sm_80+; not yet measured on a GPU, so off by default).
        options = compile_options(cp_async)
        self._modules = {
            name: cupy.RawModule(code=source_code(name), options=options)
            for name in INFERENCE_SOURCES
        }

    def _kernel(self, source: str, name: str):
        return self._modules[source].get_function(name)

    def asarray(self, x: np.ndarray, out: cupy.ndarray | None = None) -> cupy.ndarray:
        if out is not None:  # a planned place
            self.copy_into(out, x)
            return out
        return cupy.ascontiguousarray(cupy.asarray(x, dtype=cupy.float32))

    def to_numpy(self, x: cupy.ndarray) -> np.ndarray:
        return cupy.asnumpy(x)

    def arena(self, floats: int) -> cupy.ndarray:
        return cupy.empty((max(floats, 1),), dtype=cupy.float32)

    def arena_view(self, arena: cupy.ndarray, start: int, shape: tuple[int, int, int, int],
                   first: int, channels: int) -> cupy.ndarray:
        """Channels first..first+channels of the (N, C, H, W) buffer at `start` floats."""
        buffer = arena[start: start + int(np.prod(shape))].reshape(shape)
        return buffer[:, first: first + channels]

    def copy_into(self, out: cupy.ndarray, x: cupy.ndarray | np.ndarray) -> None:
        """A host or device array of out's shape into out (contiguous)."""
        if isinstance(x, np.ndarray):
            out.set(np.ascontiguousarray(x, dtype=np.float32))
        else:
            cupy.copyto(out, x)

    def capture(self, run: Callable[[], None]) -> Callable[[], None]:
        """`run`'s launches recorded once as a CUDA graph (nothing runs while recording);
        returns what replays them, as one launch on the current stream. `run` must not
        allocate (planned memory) nor copy to the host."""
        if not self.graphs:
            return run
        stream = cupy.cuda.Stream(non_blocking=True)
        try:
            with stream:
                stream.begin_capture()
                try:
                    run()
                finally:
                    graph = stream.end_capture()
        except (RuntimeError, cupy.cuda.runtime.CUDARuntimeError) as error:
            # Not yet run on a GPU: where capture fails, say so once and go on without graphs.
            warnings.warn(f"CUDA graph capture failed ({error}); running launch by launch", stacklevel=2)
            return run
        return lambda: graph.launch(cupy.cuda.get_current_stream())

    @staticmethod
    def _out(out: cupy.ndarray | None, shape: tuple[int, ...]) -> cupy.ndarray:
        if out is None:
            return cupy.empty(shape, dtype=cupy.float32)
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
        return out

    def prepare_conv(self, weights, bias, bn, *, stride, padding, groups, activation) -> CudaConv:
        w, b = fold_batchnorm(weights, bias, bn)
        act = activation_code(activation)
        return CudaConv(cupy.asarray(w), cupy.asarray(b), stride, padding, groups, act, make_tap_table(w))

    def conv2d(self, x: cupy.ndarray, conv: CudaConv, *, out: cupy.ndarray | None = None,
               kernel: str | None = None) -> cupy.ndarray:
        """kernel: one of CONV_KERNELS to run instead of the one chosen for the shape (the
        lessons run each kernel on one layer)."""
        return self._conv(x, conv, None, -1, out, kernel)

    def _conv(self, x: cupy.ndarray, conv: CudaConv, residual: cupy.ndarray | None, res_act: int,
              out: cupy.ndarray | None, kernel: str | None = None):
        n, c, h, w = x.shape
        f, _, k_h, k_w = conv.weights.shape
        pad_h, pad_w = pair(conv.padding)
        oh = conv_output_size(h, k_h, conv.stride, pad_h)
        ow = conv_output_size(w, k_w, conv.stride, pad_w)
        y = self._out(out, (n, f, oh, ow))
        args = (x, conv.weights, conv.bias, y, *map(np.int32, (n, c, h, w, f, k_h, k_w, conv.stride,
                pad_h, pad_w, conv.groups, oh, ow)), _image_stride(x), _image_stride(y),
                np.int32(conv.act), y if residual is None else residual, np.int32(res_act))
        pixels, group_filters = n * oh * ow, f // conv.groups
        chosen = kernel or choose_conv_kernel(pixels, group_filters)
        if conv.tap_table is None and chosen not in ("conv2d_direct", "conv2d_implicit_gemm"):
            if kernel:
                taps = f"{c // conv.groups} channels a group or {k_h}x{k_w} taps"
                raise KernError(f"{kernel}: {taps}: no tap table")
            chosen = "conv2d_implicit_gemm"  # the tap table cannot hold this layer's taps
        kernel = chosen
        if kernel == "conv2d_direct":
            self._kernel("conv.cu", kernel)(_grid(y.size), (BLOCK,), args)
            return y
        pixel_tile, filter_tile = CONV_TILES[kernel]
        grid = (-(-pixels // pixel_tile), -(-group_filters // filter_tile), conv.groups)
        table = () if kernel == "conv2d_implicit_gemm" else (conv.tap_table,)
        self._kernel("conv.cu", kernel)(grid, (256,), (*args, *table))
        return y

    def conv2d_residual(self, x, conv: CudaConv, residual, *, activation, out=None):
        # The shortcut's add and activation in the convolution's store (conv.cu's epilogue).
        return self._conv(x, conv, cupy.ascontiguousarray(residual), activation_code(activation), out)

    def prepare_connected(self, weights, bias, bn, *, activation) -> CudaConv:
        # A connected layer is a 1x1 convolution of the flattened input.
        w, b = fold_batchnorm(weights, bias, bn)
        act = activation_code(activation)
        w = w[:, :, None, None]
        return CudaConv(cupy.asarray(w), cupy.asarray(b), 1, 0, 1, act, make_tap_table(w))

    def connected(self, x: cupy.ndarray, fc: CudaConv, *, out=None) -> cupy.ndarray:
        x = cupy.ascontiguousarray(x)
        return self.conv2d(x.reshape(x.shape[0], -1, 1, 1), fc, out=out)

    # The ops below read whole arrays (and, but for maxpool, write whole arrays): a channel
    # slice is made contiguous first (never the case in a planned network: nets/memory.py
    # slices only what convolutions and routes read).
    def maxpool(self, x, *, size, stride, padding, out=None):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        oh = maxpool_output_size(h, size, stride, padding)
        ow = maxpool_output_size(w, size, stride, padding)
        y = self._out(out, (n, c, oh, ow))
        args = (x, y, *map(np.int32, (n * c, h, w, size, stride, padding, oh, ow, c)), _image_stride(y))
        self._kernel("pool.cu", "maxpool")(_grid(y.size), (BLOCK,), args)
        return y

    def avgpool(self, x, *, out=None):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = self._out(out, (n, c, 1, 1))
        self._kernel("pool.cu", "avgpool")((n * c,), (DEFINES["REDUCE_THREADS"],), (x, y, np.int32(h * w)))
        return y

    def softmax(self, x, *, groups, temperature, out=None):
        x = cupy.ascontiguousarray(x)
        y = self._out(out, x.shape)
        width = x.size // (x.shape[0] * groups)
        args = (x, y, np.int32(width), np.float32(temperature))
        rows = x.shape[0] * groups
        self._kernel("elementwise.cu", "softmax_rows")((rows,), (DEFINES["REDUCE_THREADS"],), args)
        return y

    def shortcut(self, x, source, *, alpha, beta, activation, out=None):
        x, source = cupy.ascontiguousarray(x), cupy.ascontiguousarray(source)
        y = self._out(out, x.shape)
        args = (x, source, y, *map(np.int32, x.shape), *map(np.int32, source.shape[1:]),
                np.float32(alpha), np.float32(beta), np.int32(activation_code(activation)))
        self._kernel("elementwise.cu", "shortcut")(_grid(y.size), (BLOCK,), args)
        return y

    def route(self, xs: Sequence[cupy.ndarray], *, out=None) -> cupy.ndarray:
        """Copies each input into its channels of the output, unless it is there already
        (written there by the layer that made it: planned memory)."""
        n, _, h, w = xs[0].shape
        y = self._out(out, (n, sum(x.shape[1] for x in xs), h, w))
        first = 0
        for x in xs:
            place = y[:, first: first + x.shape[1]]
            if place.data.ptr != x.data.ptr or place.strides != x.strides:
                sizes = map(np.int32, (n, x.shape[1], h * w))
                args = (x, place, *sizes, _image_stride(x), _image_stride(place))
                self._kernel("elementwise.cu", "copy_channels")(_grid(x.size), (BLOCK,), args)
            first += x.shape[1]
        return y

    def crop(self, x, *, height, width, scale, shift, out=None):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = self._out(out, (n, c, height, width))
        args = (x, y, *map(np.int32, (n * c, h, w, height, width)), np.float32(scale), np.float32(shift))
        self._kernel("elementwise.cu", "crop")(_grid(y.size), (BLOCK,), args)
        return y

    def activate(self, x, activation, *, out=None):
        x = cupy.ascontiguousarray(x)
        y = self._out(out, x.shape)
        args = (x, y, np.int64(x.size), np.int32(activation_code(activation)))
        self._kernel("elementwise.cu", "activate_all")(_grid(x.size), (BLOCK,), args)
        return y

    # ---- per-channel ops (Caffe's networks; Darknet's [batchnorm])
    def prepare_affine(self, scale, bias, *, activation, slope=None) -> CudaAffine:
        slope = np.ones_like(scale) if slope is None else slope
        scale, bias, slope = (cupy.asarray(np.asarray(v, dtype=np.float32)) for v in (scale, bias, slope))
        return CudaAffine(scale, bias, slope, activation_code(activation))

    def affine(self, x, a: CudaAffine, *, out=None):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = self._out(out, x.shape)
        args = (x, y, a.scale, a.bias, a.slope, np.int64(x.size), np.int32(c), np.int32(h * w), np.int32(a.act))
        self._kernel("elementwise.cu", "affine_channels")(_grid(x.size), (BLOCK,), args)
        return y

    def pool_window(self, x, *, method, kernel, stride, pad, out_size, out=None):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = self._out(out, (n, c, *out_size))
        sizes = (n * c, h, w, *kernel, *stride, *pad, *out_size, method == "max")
        self._kernel("pool.cu", "pool_window")(_grid(y.size), (BLOCK,), (x, y, *map(np.int32, sizes)))
        return y

    def combine(self, x, other, *, operation, out=None):
        x, other = cupy.ascontiguousarray(x), cupy.ascontiguousarray(other)
        y = self._out(out, x.shape)
        args = (x, other, y, np.int64(x.size), np.int32(operation == "max"))
        self._kernel("elementwise.cu", "combine")(_grid(x.size), (BLOCK,), args)
        return y

    def scale_channels(self, x, factors, add=None, *, out=None):
        x, factors = cupy.ascontiguousarray(x), cupy.ascontiguousarray(factors)
        y = self._out(out, x.shape)
        has_add = add is not None
        add = cupy.ascontiguousarray(add) if has_add else x
        args = (x, factors, add, y, np.int64(x.size), np.int32(x.shape[2] * x.shape[3]), np.int32(has_add))
        self._kernel("elementwise.cu", "scale_channels")(_grid(x.size), (BLOCK,), args)
        return y

    def lrn(self, x, *, size, alpha, beta, k, out=None):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = self._out(out, x.shape)
        args = (x, y, *map(np.int32, (n, c, h * w, size)), *map(np.float32, (alpha, beta, k)))
        self._kernel("elementwise.cu", "lrn_channels")(_grid(x.size), (BLOCK,), args)
        return y

    def slice_channels(self, x, *, first, count, out=None):
        """Channels first..first+count of x (copy_channels reads the strided view)."""
        n, _, h, w = x.shape
        y = self._out(out, (n, count, h, w))
        place = x[:, first: first + count]
        args = (place, y, *map(np.int32, (n, count, h * w)), _image_stride(place), _image_stride(y))
        self._kernel("elementwise.cu", "copy_channels")(_grid(y.size), (BLOCK,), args)
        return y
