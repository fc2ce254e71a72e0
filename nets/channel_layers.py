"""Layers that Caffe's networks need (nets/caffe) and Darknet's do not, on the backends'
per-channel ops (kern/ref/channels.py): scaling by another layer's per-channel values
(squeeze-and-excitation), cross-channel LRN, a slice of channels, and the product or maximum
of two layers' outputs. (The channel affine and
the standalone activation are Darknet's [batchnorm] and [activation] too: nets/layers.py.)"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nets.layers import Layer, into, shape_line


@dataclass(frozen=True)
class ScaleChannels(Layer):
    """x * outputs[factors] (one value per image and channel), + outputs[add] where set."""

    factors: int
    add: int | None

    kind = "scale"

    def sources(self) -> tuple[int, ...]:
        return (self.factors,) if self.add is None else (self.factors, self.add)

    def forward(self, backend, prepared, x, outputs, out=None):
        add = None if self.add is None else outputs[self.add]
        return backend.scale_channels(x, outputs[self.factors], add, **into(out))

    @property
    def flops(self) -> float:
        return float((1 if self.add is None else 2) * np.prod(self.out_shape))

    def describe(self) -> str:
        plus = "" if self.add is None else f" + {self.add}"
        return shape_line(f"scale by {self.factors}{plus}", self)


@dataclass(frozen=True)
class LRN(Layer):
    size: int
    alpha: float
    beta: float
    k: float

    kind = "lrn"

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.lrn(x, size=self.size, alpha=self.alpha, beta=self.beta, k=self.k, **into(out))

    def describe(self) -> str:
        return shape_line(f"lrn {self.size}", self)


@dataclass(frozen=True)
class SliceChannels(Layer):
    first: int

    kind = "slice"

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.slice_channels(x, first=self.first, count=self.out_shape[0], **into(out))

    def describe(self) -> str:
        return shape_line(f"slice {self.first}..{self.first + self.out_shape[0] - 1}", self)


@dataclass(frozen=True)
class Combine(Layer):
    """Caffe's Eltwise PROD or MAX: x with the output of layer `other`, element by element."""

    other: int
    operation: str  # "prod" or "max"

    kind = "combine"

    def sources(self) -> tuple[int, ...]:
        return (self.other,)

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.combine(x, outputs[self.other], operation=self.operation, **into(out))

    def describe(self) -> str:
        return shape_line(f"{self.operation} with {self.other}", self)


@dataclass(frozen=True)
class PoolWindow(Layer):
    """Caffe's MAX or AVE pooling with its own rules (kern/ref/channels.py: pool_window), where
    Darknet's max pool, the global average or a depthwise convolution cannot stand in for it."""

    method: str  # "max" or "ave"
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]

    kind = "pool"

    def forward(self, backend, prepared, x, outputs, out=None):
        options = dict(method=self.method, kernel=self.kernel, stride=self.stride, pad=self.pad)
        return backend.pool_window(x, **options, out_size=self.out_shape[1:], **into(out))

    def describe(self) -> str:
        return shape_line(f"{self.method} {self.kernel[0]}x{self.kernel[1]}/{self.stride[0]}", self)
