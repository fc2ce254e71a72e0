"""The CPU backend's training ops (kern/backend.py's TrainingBackend; what each computes:
kern/ref/training.py). This class only dispatches: the kernels live beside their forward
ones (conv.py and wgrad.py for convolution, batchnorm.py, pool.py, elementwise.py).

Arrays are channels-last (N, H, W, C) float32, as the inference backend's; parameters are
host float32 arrays in Darknet's layouts (OIHW weights). A convolution's weights are packed
for the forward GEMM, and turned and packed for the input gradient, once per update
(`conv_weights`, lazily). Every reduction runs in a fixed order, so a training run gives the
same bits for any thread count. The arrays of a pass (outputs, gradients, scratch) are lent
by PassBuffers and lent again to the next pass (`new_pass`): a step maps no new memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kern.cpu import CpuBackend, batchnorm, conv, elementwise, pool, wgrad, winograd_plain
from kern.cpu.buffers import PassBuffers
from kern.cpu.connected import pack_connected
from kern.cpu.gemm import conv_gemm, pack_panels
from kern.params import activation_code, conv_output_size, maxpool_output_size
from kern.ref.elementwise import softmax_cross_entropy

WINOGRAD, TURNED_WINOGRAD = ("winograd",), ("turned winograd",)  # TrainConv's keys of reusable packs


@dataclass
class TrainConv:
    """A convolution's weights as the training ops read them, until the next update: packed
    for the direct GEMM, for Winograd where it fits (3x3, stride 1, padding 1, one group, 64
    channels or more), and turned for the input gradient, each the first time it is needed.
    The Winograd packs go into the arrays of the layer's TrainConv before the update (`spare`)."""

    weights: np.ndarray  # OIHW
    groups: int
    spare: dict[tuple, object] = field(default_factory=dict)
    prepared: dict[tuple, object] = field(default_factory=dict)

    def _get(self, key: tuple, make):
        if key not in self.prepared:
            self.prepared[key] = make()
        return self.prepared[key]

    def packed(self) -> np.ndarray:
        return self._get(("direct",), lambda: conv.pack_weights(self.weights, self.groups))

    def _winograd(self, key: tuple, turned: bool) -> np.ndarray:
        return self._get(key, lambda: winograd_plain.pack_weights(self.weights, turned, self.spare.get(key)))

    def winograd(self) -> np.ndarray:
        return self._winograd(WINOGRAD, False)

    def phases(self, stride: int, padding: int) -> list:
        return self._get(("turned", stride, padding),
                         lambda: conv.transposed_weights(self.weights, self.groups, stride, padding))

    def turned_winograd(self) -> np.ndarray:
        """The input gradient of a 3x3 stride-1 padding-1 layer is a 3x3 stride-1 padding-1
        convolution of dz with these weights, (C, F, 3, 3) turned around."""
        return self._winograd(TURNED_WINOGRAD, True)


@dataclass(frozen=True)
class PoolWinners:
    """What maxpool_forward hands to maxpool_backward: the winners and the window."""

    where: np.ndarray  # (N, OH, OW, C) int32: the flat index in its image of each output's winner
    size: int
    stride: int
    padding: int


class CpuTraining:
    name = "cpu"

    def __init__(self, threads: int | None = None, simd: str | None = None) -> None:
        self.inference = CpuBackend(threads=threads, simd=simd)  # its layout, threads and vector width
        self.lanes = self.inference.lanes
        self.buffers = PassBuffers()

    def new_pass(self) -> None:
        """A training pass begins: the arrays the ops returned before are free again."""
        self.buffers.new_pass()

    def give_back(self, array: np.ndarray) -> None:
        """An array an op returned in this pass is dead: later ops may reuse its memory."""
        self.buffers.give_back(array)

    def _threads(self) -> None:
        self.inference._use_threads()

    # ---- arrays
    def asarray(self, x: np.ndarray) -> np.ndarray:
        n_images, channels, height, width = x.shape
        return self.inference.asarray(x, out=self.buffers.empty((n_images, height, width, channels)))

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.inference.to_numpy(x)

    def parameter(self, value: np.ndarray) -> np.ndarray:
        return np.array(value, dtype=np.float32)

    def host(self, param: np.ndarray) -> np.ndarray:
        """A parameter (or update buffer) as a host array, a copy."""
        return np.array(param)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def add(self, into: np.ndarray | None, value: np.ndarray) -> np.ndarray:
        if into is None:
            return value
        self._threads()
        elementwise.add_into(into, np.ascontiguousarray(value))
        return into

    # ---- convolution
    def conv_weights(self, weights: np.ndarray, groups: int, previous: TrainConv | None = None) -> TrainConv:
        # Only the Winograd packs are packed into again: the previous direct packs may go.
        old = {} if previous is None else previous.prepared
        spare = {key: old[key] for key in (WINOGRAD, TURNED_WINOGRAD) if key in old}
        return TrainConv(weights, groups, spare=spare)

    def conv2d(self, x, prepared: TrainConv, *, stride, padding, groups, bias=None, activation="linear"):
        self._threads()
        filters, channels, ksize, _ = prepared.weights.shape
        bias = np.zeros(filters, dtype=np.float32) if bias is None else bias
        act = activation_code(activation)
        n_images, height, width, _ = x.shape
        out_h, out_w = (conv_output_size(side, ksize, stride, padding) for side in (height, width))
        out = self.buffers.empty((n_images, out_h, out_w, filters))
        with self.buffers.scratch() as scratch:
            if winograd_plain.fits(ksize, stride, padding, groups, channels):
                return winograd_plain.conv2d_winograd(
                    x, prepared.winograd(), bias, filters, act, out=out, empty=scratch
                )
            packed = prepared.packed()
            return conv.conv2d_gemm(x, packed, bias, filters, ksize, stride, padding, act, lanes=self.lanes,
                                    out=out, empty=scratch)

    def conv2d_backward_input(self, dz, prepared: TrainConv, *, in_shape, stride, padding, groups, into=None):
        """dL/dx; where `into` is given, added to it: in a new array where the convolution's
        store adds it (a GEMM's store may write part of its output before it has read the
        residual there, so not in place), else in `into` itself (strided layers)."""
        self._threads()
        filters, channels, ksize, _ = prepared.weights.shape
        shape = (dz.shape[0], in_shape[1], in_shape[2], in_shape[0])
        # A strided layer's phases add into `into` itself: no array of its own to lend.
        out = self.buffers.empty(shape) if into is None or stride == 1 else None
        with self.buffers.scratch() as scratch:
            if winograd_plain.fits(ksize, stride, padding, groups, filters):
                bias = np.zeros(channels, dtype=np.float32)
                residual = {} if into is None else {"residual": into, "residual_act": 0}
                turned = prepared.turned_winograd()
                return winograd_plain.conv2d_winograd(
                    dz, turned, bias, channels, 0, out=out, empty=scratch, **residual
                )
            phases = prepared.phases(stride, padding)
            return conv.conv2d_backward_input(
                dz, phases, tuple(in_shape), stride, padding, self.lanes, into, scratch, out
            )

    def conv2d_backward_weights(self, x, dz, *, ksize, stride, padding, groups, into) -> None:
        self._threads()
        threads, lanes = self.inference.threads, self.lanes
        with self.buffers.scratch() as scratch:
            images = conv.pad(x, padding, scratch) if padding else x
            wgrad.conv2d_backward_weights(
                images, dz, ksize, stride, groups, threads, lanes, into=into, empty=scratch
            )

    def bias_activate(self, z, bias, activation: str) -> np.ndarray:
        self._threads()
        out = self.buffers.empty(z.shape)
        np.add(z, bias, out=out)
        elementwise.activate(out, activation_code(activation), out)
        return out

    def activation_backward(self, dy, y, activation: str, *, biases_into) -> np.ndarray:
        """dL/dz (over dy) = dy * activation'(y); its sum per channel is added to biases_into."""
        self._threads()
        dz, dbiases = batchnorm.activation_backward(dy, y, activation_code(activation))
        biases_into += dbiases
        return dz

    def batchnorm_forward(self, z, scales, biases, rolling_mean, rolling_variance, activation):
        self._threads()
        act = activation_code(activation)
        rolling = (rolling_mean, rolling_variance)
        return batchnorm.batchnorm_forward(z, scales, biases, *rolling, act, self.buffers.empty)

    def batchnorm_backward(
        self, dy, y, z, mean, variance, scales, biases, activation, *, scales_into, biases_into
    ):
        self._threads()
        act = activation_code(activation)
        dz, dscales, dbiases = batchnorm.batchnorm_backward(dy, y, z, mean, variance, scales, biases, act)
        scales_into += dscales
        biases_into += dbiases
        return dz

    # ---- connected: the images as one row of N "pixels" with C*H*W channels (C, H, W order)
    @staticmethod
    def _flat(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(1, 1, x.shape[0], -1)

    def connected(self, x, weights) -> np.ndarray:
        self._threads()
        out = np.empty((1, 1, x.shape[0], weights.shape[0]), dtype=np.float32)
        bias = np.zeros(weights.shape[0], dtype=np.float32)
        conv_gemm(self._flat(x), pack_connected(weights), bias, 0, 1, 1, out, 1, 0, out, -1)
        return out.reshape(x.shape[0], 1, 1, -1)

    def connected_backward_weights(self, x, dz, *, into) -> None:
        self._threads()
        rows = dz.reshape(1, 1, dz.shape[0], -1)
        dw = wgrad.conv2d_backward_weights(self._flat(x), rows, 1, 1, 1, self.inference.threads, self.lanes)
        into += dw.reshape(into.shape)

    def connected_backward_input(self, dz, weights, *, in_shape, into=None):
        self._threads()
        channels, height, width = in_shape
        out = np.empty((1, 1, dz.shape[0], weights.shape[1]), dtype=np.float32)
        bias = np.zeros(weights.shape[1], dtype=np.float32)
        rows = np.ascontiguousarray(dz.reshape(1, 1, dz.shape[0], -1))
        turned = pack_panels(np.ascontiguousarray(weights.T)[np.newaxis])
        conv_gemm(rows, turned, bias, 0, 1, 1, out, 1, 0, out, -1)
        dx = np.ascontiguousarray(out.reshape(dz.shape[0], channels, height, width).transpose(0, 2, 3, 1))
        return self.add(into, dx)

    # ---- pooling
    def maxpool_forward(self, x, *, size, stride, padding):
        self._threads()
        n_images, height, width, channels = x.shape
        shape = (n_images, maxpool_output_size(height, size, stride, padding),
                 maxpool_output_size(width, size, stride, padding), channels)
        out, where = self.buffers.empty(shape), self.buffers.empty(shape, np.int32)
        pool.maxpool_argmax(x, size, stride, padding, out, where)
        return out, PoolWinners(where, size, stride, padding)

    def maxpool_backward(self, dy, winners: PoolWinners, *, in_shape, into=None):
        self._threads()
        channels, height, width = in_shape
        dx = self.buffers.empty((dy.shape[0], height, width, channels)) if into is None else into
        window = (winners.size, winners.stride, winners.padding)
        pool.maxpool_backward(dy, winners.where, *window, dx, into is not None)
        return dx

    def avgpool(self, x):
        self._threads()
        return pool.avgpool(x)

    def avgpool_backward(self, dy, *, in_shape, into=None):
        self._threads()
        channels, height, width = in_shape
        dx = self.buffers.empty((dy.shape[0], height, width, channels)) if into is None else into
        pool.avgpool_backward(dy, dx, into is not None)
        return dx

    # ---- the head: small (N x classes), in NumPy on the NCHW values
    def softmax_cross_entropy(self, x, labels, *, groups, temperature, cost_scale):
        labels = np.asarray(labels)
        p, cost, dx = softmax_cross_entropy(self.to_numpy(x), labels, groups, temperature, cost_scale)
        return self.asarray(p), cost, self.asarray(dx)

    # ---- data movement
    def shortcut(self, x, source, *, alpha, beta, activation):
        out = self.buffers.empty(x.shape)
        return self.inference.shortcut(x, source, alpha=alpha, beta=beta, activation=activation, out=out)

    def shortcut_backward(self, dy, y, *, source_shape, alpha, beta, activation):
        self._threads()
        channels, height, width = source_shape
        dx = self.buffers.empty(dy.shape)
        dsource = self.buffers.empty((dy.shape[0], height, width, channels))
        dsource.fill(0.0)
        act = activation_code(activation)
        elementwise.shortcut_backward(dy, y, float(alpha), float(beta), act, dx, dsource)
        return dx, dsource

    def route(self, xs: Sequence[np.ndarray]) -> np.ndarray:
        out = self.buffers.empty((*xs[0].shape[:3], sum(x.shape[3] for x in xs)))
        return self.inference.route(xs, out=out)

    def route_backward(self, dy, channels: Sequence[int]) -> list[np.ndarray]:
        bounds = np.cumsum([0, *channels])
        return [np.ascontiguousarray(dy[..., a:b]) for a, b in zip(bounds, bounds[1:])]

    def dropout_mask(self, keep: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        """keep as NHWC bytes (the kernel's layout) and the scale of kept values."""
        return np.ascontiguousarray(keep.transpose(0, 2, 3, 1)).view(np.uint8), float(scale)

    def dropout(self, x, mask: tuple[np.ndarray, float]) -> np.ndarray:
        self._threads()
        out = self.buffers.empty(x.shape)
        elementwise.dropout(x, *mask, out)
        return out

    def dropout_backward(self, dy, mask: tuple[np.ndarray, float], into=None):
        return self.add(into, self.dropout(dy, mask))

    def crop(self, x, *, height, width, top, left, flip, scale, shift):
        source = x[:, :, ::-1] if flip else x
        window = source[:, top : top + height, left : left + width]
        return np.ascontiguousarray(window * np.float32(scale) + np.float32(shift), dtype=np.float32)

    # ---- the update
    def sgd_update(self, param, update, *, rate: float, momentum: float, decay: float) -> None:
        self._threads()
        elementwise.sgd_update(param, update, rate, momentum, decay)
