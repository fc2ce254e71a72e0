"""The CUDA backend's training ops (kern/backend.py's TrainingBackend; what each computes:
kern/ref/training.py), on the kernels of kern/cuda/train.cu and, for the forward passes that
inference has too (convolution, connected, shortcut, route, average pool), the inference
backend's own. cudasim loads this file with its stand-in for cupy (kern/cudasim).

Arrays are NCHW float32 device arrays; parameters are device arrays in Darknet's layouts
(OIHW weights), updated in place by sgd_update, so a convolution reads its weights where they
are (nothing to repack after an update). Every sum is made in a fixed order by one thread or
one block (no float atomics): a run repeats bit for bit. Not yet run on a GPU: the weight
gradient is a tiled GEMM, the input gradient one thread per input value gathering what it
reached, written to be right first; `python -m bench.cuda_check` times training on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# cupy as backend.py imported it (which says what is missing where it is not; cudasim's stand-in
# when cudasim loads these files).
from kern.cuda.backend import BLOCK, CudaBackend, CudaConv, cupy, make_tap_table
from kern.cuda.sources import DEFINES, compile_options, source_code
from kern.params import ROLLING_RATE, activation_code, maxpool_output_size

REDUCE_THREADS = DEFINES["REDUCE_THREADS"]  # the block of every kernel that sums


def _grid(count: int) -> tuple[int]:
    return ((count + BLOCK - 1) // BLOCK,)


def _ints(*values: int) -> tuple:
    return tuple(np.int32(v) for v in values)


@dataclass
class TrainWeights:
    """A convolution's weights as the training ops read them: the parameter itself (OIHW) and
    the tap table of the inference GEMMs (made once per weights shape: CudaTraining._taps)."""

    weights: cupy.ndarray
    groups: int
    tap_table: cupy.ndarray | None


@dataclass(frozen=True)
class PoolWinners:
    """What maxpool_forward hands to maxpool_backward: the winner of each output (its index
    in the plane, -1 for none) and the window."""

    where: cupy.ndarray  # int32, the output's shape
    size: int
    stride: int
    padding: int


class CudaTraining:
    name = "cuda"

    def __init__(self) -> None:
        self.inference = CudaBackend(graphs=False)
        self._module = cupy.RawModule(code=source_code("train.cu"), options=compile_options())
        self._zeros: dict[int, cupy.ndarray] = {}  # zero biases by length, for bias-free convolutions
        self._tap_tables: dict[tuple, cupy.ndarray | None] = {}  # by weights shape: not remade per update

    def _launch(self, kernel: str, grid: tuple, block: tuple, args: tuple) -> None:
        self._module.get_function(kernel)(grid, block, args)

    def _elementwise(self, kernel: str, count: int, args: tuple) -> None:
        self._launch(kernel, _grid(count), (BLOCK,), args)

    def _reduce(self, kernel: str, blocks: int, args: tuple) -> None:
        self._launch(kernel, (blocks,), (REDUCE_THREADS,), args)

    # ---- arrays
    def asarray(self, x: np.ndarray) -> cupy.ndarray:
        return cupy.asarray(np.ascontiguousarray(x, dtype=np.float32))

    def to_numpy(self, x: cupy.ndarray) -> np.ndarray:
        return cupy.asnumpy(x)

    def parameter(self, value: np.ndarray) -> cupy.ndarray:
        return self.asarray(np.asarray(value))

    def host(self, param: cupy.ndarray) -> np.ndarray:
        """A parameter (or update buffer) as a host array, a copy."""
        return cupy.asnumpy(param)

    def zeros(self, shape: tuple[int, ...]) -> cupy.ndarray:
        return cupy.zeros(tuple(shape), dtype=cupy.float32)

    def new_pass(self) -> None:
        """CuPy's memory pool already reuses the device memory freed by the last pass."""

    def give_back(self, array: cupy.ndarray) -> None:
        """CuPy's pool reuses an array's memory once nothing refers to it."""

    def add(self, into: cupy.ndarray | None, value: cupy.ndarray) -> cupy.ndarray:
        if into is None:
            return value
        if tuple(value.shape) != tuple(into.shape):
            raise ValueError(f"adding shape {tuple(value.shape)} into {tuple(into.shape)}")
        self._elementwise("add_into", into.size, (into, cupy.ascontiguousarray(value), np.int64(into.size)))
        return into

    @staticmethod
    def _new_or_into(shape: tuple[int, ...], into: cupy.ndarray | None) -> tuple:
        """(out, into, accumulate) for a kernel that writes out = into + its result, or its
        result alone: with `into` it writes in place."""
        if into is None:
            out = cupy.empty(shape, dtype=cupy.float32)
            return out, out, np.int32(0)
        if tuple(into.shape) != tuple(shape):
            raise ValueError(f"into has shape {tuple(into.shape)}, expected {tuple(shape)}")
        return into, into, np.int32(1)

    # ---- convolution
    def conv_weights(
        self, weights: cupy.ndarray, groups: int, previous: TrainWeights | None = None
    ) -> TrainWeights:
        """previous: not read (CuPy's pool already reuses memory)."""
        return TrainWeights(weights, groups, self._taps(weights))

    def _taps(self, weights: cupy.ndarray) -> cupy.ndarray | None:
        shape = tuple(weights.shape)
        if shape not in self._tap_tables:
            self._tap_tables[shape] = make_tap_table(weights)
        return self._tap_tables[shape]

    def _bias(self, filters: int, bias: cupy.ndarray | None) -> cupy.ndarray:
        if bias is not None:
            return bias
        if filters not in self._zeros:
            self._zeros[filters] = self.zeros((filters,))
        return self._zeros[filters]

    def conv2d(self, x, prepared: TrainWeights, *, stride, padding, groups, bias=None, activation="linear"):
        """The convolution's output z, or activation(z + bias) with a bias: the inference
        backend's kernels, with the weights as they are."""
        filters = prepared.weights.shape[0]
        act = activation_code(activation) if bias is not None else 0
        bias = self._bias(filters, bias)
        conv = CudaConv(prepared.weights, bias, stride, padding, groups, act, prepared.tap_table)
        return self.inference.conv2d(cupy.ascontiguousarray(x), conv)

    def conv2d_backward_input(self, dz, prepared: TrainWeights, *, in_shape, stride, padding, groups,
                              into=None):
        weights = prepared.weights
        n, f, oh, ow = dz.shape
        c, h, w = in_shape
        dx, into, accumulate = self._new_or_into((n, c, h, w), into)
        sizes = _ints(n, c, h, w, f, weights.shape[2], stride, padding, groups, oh, ow)
        self._elementwise("conv_backward_input", dx.size, (dz, weights, into, dx, *sizes, accumulate))
        return dx

    def conv2d_backward_weights(self, x, dz, *, ksize, stride, padding, groups, into) -> None:
        """dL/dW summed over the batch, ADDED into `into` (the update buffer, OIHW)."""
        n, c, h, w = x.shape
        _, f, oh, ow = dz.shape
        sizes = _ints(n, c, h, w, f, ksize, stride, padding, groups, oh, ow)
        taps, tile = (c // groups) * ksize * ksize, DEFINES["WG_TILE"]
        grid = (-(-taps // tile), -(-(f // groups) // tile), groups)
        self._launch("conv_backward_weights", grid, (tile * tile,), (x, dz, into, *sizes))

    def bias_activate(self, z, bias, activation: str) -> cupy.ndarray:
        n, c, h, w = z.shape
        y = cupy.empty(z.shape, dtype=cupy.float32)
        args = (z, bias, y, np.int64(z.size), *_ints(c, h * w, activation_code(activation)))
        self._elementwise("bias_activate", z.size, args)
        return y

    def activation_backward(self, dy, y, activation: str, *, biases_into) -> cupy.ndarray:
        """dL/dz = dy * activation'(y); its sum per channel is added to biases_into."""
        n, c, h, w = y.shape
        dz = cupy.empty(y.shape, dtype=cupy.float32)
        args = (dy, y, dz, np.int64(y.size), np.int32(activation_code(activation)))
        self._elementwise("activation_backward", y.size, args)
        self._reduce("channel_sums", c, (dz, biases_into, *_ints(n, c, h * w)))
        return dz

    def batchnorm_forward(self, z, scales, biases, rolling_mean, rolling_variance, activation):
        n, c, h, w = z.shape
        mean, variance = cupy.empty((c,), dtype=cupy.float32), cupy.empty((c,), dtype=cupy.float32)
        rates = (np.float32(1 - ROLLING_RATE), np.float32(ROLLING_RATE))
        args = (z, mean, variance, rolling_mean, rolling_variance, *_ints(n, c, h * w), *rates)
        self._reduce("batchnorm_statistics", c, args)
        y = cupy.empty(z.shape, dtype=cupy.float32)
        sizes = _ints(c, h * w, activation_code(activation))
        args = (z, mean, variance, scales, biases, y, np.int64(z.size), *sizes)
        self._elementwise("batchnorm_apply", z.size, args)
        return y, mean, variance

    def batchnorm_backward(
        self, dy, y, z, mean, variance, scales, biases, activation, *, scales_into, biases_into
    ):
        n, c, h, w = z.shape
        act = activation_code(activation)
        deltas = cupy.empty((2 * c,), dtype=cupy.float32)
        args = (dy, y, z, mean, variance, scales, deltas, scales_into, biases_into, *_ints(n, c, h * w, act))
        self._reduce("batchnorm_backward_sums", c, args)
        dz = cupy.empty(z.shape, dtype=cupy.float32)
        args = (dy, y, z, mean, variance, scales, deltas, dz, np.int64(z.size), *_ints(c, h * w, act))
        self._elementwise("batchnorm_backward_apply", z.size, args)
        return dz

    # ---- connected: a 1x1 convolution of the flattened images (C, H, W order)
    @staticmethod
    def _columns(x: cupy.ndarray) -> cupy.ndarray:
        x = cupy.ascontiguousarray(x)
        return x.reshape(x.shape[0], -1, 1, 1)

    def connected(self, x, weights) -> cupy.ndarray:
        kernel = weights.reshape(*weights.shape, 1, 1)
        return self.conv2d(self._columns(x), TrainWeights(kernel, 1, self._taps(kernel)),
                           stride=1, padding=0, groups=1)

    def connected_backward_weights(self, x, dz, *, into) -> None:
        self.conv2d_backward_weights(self._columns(x), dz, ksize=1, stride=1, padding=0, groups=1, into=into)

    def connected_backward_input(self, dz, weights, *, in_shape, into=None):
        kernel = TrainWeights(weights.reshape(*weights.shape, 1, 1), 1, None)
        columns = None if into is None else into.reshape(into.shape[0], -1, 1, 1)
        inputs = int(np.prod(in_shape))
        dx = self.conv2d_backward_input(dz, kernel, in_shape=(inputs, 1, 1), stride=1, padding=0, groups=1,
                                        into=columns)
        return dx.reshape(dz.shape[0], *in_shape)

    # ---- pooling
    def maxpool_forward(self, x, *, size, stride, padding):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        oh, ow = maxpool_output_size(h, size, stride, padding), maxpool_output_size(w, size, stride, padding)
        y = cupy.empty((n, c, oh, ow), dtype=cupy.float32)
        where = cupy.empty((n, c, oh, ow), dtype=cupy.int32)
        args = (x, y, where, *_ints(n * c, h, w, size, stride, padding, oh, ow))
        self._elementwise("maxpool_argmax", y.size, args)
        return y, PoolWinners(where, size, stride, padding)

    def maxpool_backward(self, dy, winners: PoolWinners, *, in_shape, into=None):
        n, c, oh, ow = dy.shape
        _, h, w = in_shape
        dx, into, accumulate = self._new_or_into((n, c, h, w), into)
        window = _ints(n * c, h, w, winners.size, winners.stride, winners.padding, oh, ow)
        self._elementwise("maxpool_backward", dx.size, (dy, winners.where, into, dx, *window, accumulate))
        return dx

    def avgpool(self, x):
        return self.inference.avgpool(x)

    def avgpool_backward(self, dy, *, in_shape, into=None):
        c, h, w = in_shape
        dx, into, accumulate = self._new_or_into((dy.shape[0], c, h, w), into)
        args = (dy, into, dx, np.int64(dx.size), np.int32(h * w), accumulate)
        self._elementwise("avgpool_backward", dx.size, args)
        return dx

    # ---- the head
    def softmax_cross_entropy(self, x, labels, *, groups, temperature, cost_scale):
        """(p, the cost, dL/dx): costs are summed on the host in float64, one small copy."""
        x = cupy.ascontiguousarray(x)
        images = x.shape[0]
        width = x.size // (images * groups)
        p = cupy.empty(x.shape, dtype=cupy.float32)
        dx = cupy.empty(x.shape, dtype=cupy.float32)
        costs = cupy.empty((images, 2), dtype=cupy.float32)
        labels = cupy.asarray(np.ascontiguousarray(labels, dtype=np.int32))
        scale = 0.0 if cost_scale is None else cost_scale
        args = (x, labels, p, dx, costs, *_ints(width, groups), np.float32(temperature), np.float32(scale),
                np.int32(cost_scale is not None))
        self._reduce("softmax_cross_entropy", images, args)
        entropy, squares = cupy.asnumpy(costs).astype(np.float64).sum(axis=0)
        cost = float(entropy) if cost_scale is None else float(entropy + squares) / 2
        return p, cost, dx

    # ---- data movement
    def shortcut(self, x, source, *, alpha, beta, activation):
        return self.inference.shortcut(x, source, alpha=alpha, beta=beta, activation=activation)

    def shortcut_backward(self, dy, y, *, source_shape, alpha, beta, activation):
        n, c, h, w = y.shape
        cs, hs, ws = source_shape
        dx = cupy.empty(y.shape, dtype=cupy.float32)
        dsource = cupy.empty((n, cs, hs, ws), dtype=cupy.float32)
        sizes, act = _ints(n, c, h, w, cs, hs, ws), np.int32(activation_code(activation))
        self._elementwise("shortcut_backward_x", dx.size, (dy, y, dx, *sizes, np.float32(alpha), act))
        args = (dy, y, dsource, *sizes, np.float32(beta), act)
        self._elementwise("shortcut_backward_source", dsource.size, args)
        return dx, dsource

    def route(self, xs: Sequence[cupy.ndarray]) -> cupy.ndarray:
        return self.inference.route(xs)

    def route_backward(self, dy, channels: Sequence[int]) -> list[cupy.ndarray]:
        bounds = np.cumsum([0, *channels])
        return [self.inference.slice_channels(dy, first=int(a), count=int(b - a))
                for a, b in zip(bounds, bounds[1:])]

    def dropout_mask(self, keep: np.ndarray, scale: float) -> cupy.ndarray:
        """On the device, scale where keep (a host bool mask of x's shape), 0 elsewhere."""
        return self.asarray(np.where(keep, np.float32(scale), np.float32(0)))

    def dropout(self, x, mask: cupy.ndarray) -> cupy.ndarray:
        y = cupy.empty(x.shape, dtype=cupy.float32)
        args = (x, mask, y, y, np.int64(x.size), np.int32(0))
        self._elementwise("multiply", x.size, args)
        return y

    def dropout_backward(self, dy, mask: cupy.ndarray, into=None):
        dx, into, accumulate = self._new_or_into(dy.shape, into)
        args = (dy, mask, into, dx, np.int64(dy.size), accumulate)
        self._elementwise("multiply", dy.size, args)
        return dx

    def crop(self, x, *, height, width, top, left, flip, scale, shift):
        x = cupy.ascontiguousarray(x)
        n, c, h, w = x.shape
        y = cupy.empty((n, c, height, width), dtype=cupy.float32)
        args = (x, y, *_ints(n * c, h, w, height, width, top, left, flip), np.float32(scale), np.float32(shift))
        self._elementwise("crop_window", y.size, args)
        return y

    # ---- the update, in place
    def sgd_update(self, param, update, *, rate: float, momentum: float, decay: float) -> None:
        args = (param, update, np.int64(param.size), *map(np.float32, (rate, momentum, decay)))
        self._elementwise("sgd_update", param.size, args)
