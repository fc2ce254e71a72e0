"""One small class per Darknet layer type, and the registry of builders keyed by section name.

A layer is a plain description (shapes, options, the parameters it reads from .weights);
`prepare` hands its parameters to a backend once, `forward` runs it. Shapes are (C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kern.backend import Backend
from kern.params import ACTIVATIONS, BatchNorm, conv_output_size, fold_batchnorm, maxpool_output_size
from nets.cfg import Section

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ParamSpec:
    """One float32 array of a layer in a .weights file, in file order."""

    name: str
    shape: tuple[int, ...]
    # Connected weights are stored [inputs][outputs] when the header's major or minor > 1000.
    transposed_if_flagged: bool = False

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class Layer:
    index: int
    in_shape: Shape
    out_shape: Shape

    kind = "layer"

    def params(self) -> list[ParamSpec]:
        return []

    def sources(self) -> tuple[int, ...]:
        """Indices of earlier layers (besides the previous one) whose outputs this one reads."""
        return ()

    @property
    def flops(self) -> float:
        return 0.0

    def prepare(self, backend: Backend, values: dict[str, np.ndarray]) -> Any:
        return None

    def forward(
        self, backend: Backend, prepared: Any, x: Any, outputs: dict[int, Any], out: Any = None
    ) -> Any:
        """This layer on x (and on the outputs of earlier layers it reads); `out`, where given,
        is where to write (planned memory, nets/memory.py)."""
        return x

    def describe(self) -> str:
        raise NotImplementedError


def into(out: Any) -> dict[str, Any]:
    """`out=` for a backend op where there is a planned place (only backends with planned
    memory are given one)."""
    return {} if out is None else {"out": out}


def _dims(shape: Shape) -> tuple[int, int, int]:
    """Darknet prints w x h x c."""
    c, h, w = shape
    return w, h, c


def shape_line(kind: str, layer: Layer) -> str:
    """A table line for a layer that keeps to one map: kind, input -> output."""
    return "%-22s  %4d x%4d x%4d   ->  %4d x%4d x%4d" % (kind, *_dims(layer.in_shape), *_dims(layer.out_shape))


def _batchnorm(values: dict[str, np.ndarray]) -> BatchNorm | None:
    if "scales" not in values:
        return None
    return BatchNorm(values["scales"], values["rolling_mean"], values["rolling_variance"])


@dataclass(frozen=True)
class Convolutional(Layer):
    filters: int
    size: int
    stride: int
    padding: int
    groups: int
    batch_normalize: bool
    activation: str

    kind = "conv"

    def params(self) -> list[ParamSpec]:
        n = self.filters
        specs = [ParamSpec("biases", (n,))]
        if self.batch_normalize:
            specs += [ParamSpec(name, (n,)) for name in ("scales", "rolling_mean", "rolling_variance")]
        group_channels = self.in_shape[0] // self.groups
        return specs + [ParamSpec("weights", (n, group_channels, self.size, self.size))]

    @property
    def flops(self) -> float:
        _, out_h, out_w = self.out_shape
        per_output = self.size * self.size * self.in_shape[0] // self.groups
        return 2.0 * self.filters * per_output * out_h * out_w

    def prepare(self, backend, values):
        return backend.prepare_conv(
            values["weights"], values["biases"], _batchnorm(values),
            stride=self.stride, padding=self.padding, groups=self.groups,
            activation=self.activation,
        )

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.conv2d(x, prepared, **into(out))

    def describe(self) -> str:
        return "conv  %5d %2d x%2d /%2d  %4d x%4d x%4d   ->  %4d x%4d x%4d  %5.3f BFLOPs" % (
            self.filters, self.size, self.size, self.stride,
            *_dims(self.in_shape), *_dims(self.out_shape), self.flops / 1e9,
        )


@dataclass(frozen=True)
class RectangularConvolutional(Convolutional):
    """A convolution with a non-square kernel or padding (Caffe's 1x7 and 7x1): `size` and
    `padding` are the height's, these the width's."""

    size_w: int = 1
    padding_w: int = 0

    def params(self) -> list[ParamSpec]:
        group_channels = self.in_shape[0] // self.groups
        return [ParamSpec("biases", (self.filters,)),
                ParamSpec("weights", (self.filters, group_channels, self.size, self.size_w))]

    @property
    def flops(self) -> float:
        _, out_h, out_w = self.out_shape
        return 2.0 * self.filters * self.size * self.size_w * self.in_shape[0] // self.groups * out_h * out_w

    def prepare(self, backend, values):
        return backend.prepare_conv(
            values["weights"], values["biases"], None, stride=self.stride,
            padding=(self.padding, self.padding_w), groups=self.groups, activation=self.activation,
        )

    def describe(self) -> str:
        return "conv  %5d %2d x%2d /%2d  %4d x%4d x%4d   ->  %4d x%4d x%4d  %5.3f BFLOPs" % (
            self.filters, self.size, self.size_w, self.stride,
            *_dims(self.in_shape), *_dims(self.out_shape), self.flops / 1e9,
        )


@dataclass(frozen=True)
class Connected(Layer):
    outputs: int
    batch_normalize: bool
    activation: str

    kind = "connected"

    def params(self) -> list[ParamSpec]:
        inputs = int(np.prod(self.in_shape))
        specs = [
            ParamSpec("biases", (self.outputs,)),
            ParamSpec("weights", (self.outputs, inputs), transposed_if_flagged=True),
        ]
        if self.batch_normalize:
            names = ("scales", "rolling_mean", "rolling_variance")
            specs += [ParamSpec(name, (self.outputs,)) for name in names]
        return specs

    @property
    def flops(self) -> float:
        return 2.0 * self.outputs * int(np.prod(self.in_shape))

    def prepare(self, backend, values):
        return backend.prepare_connected(
            values["weights"], values["biases"], _batchnorm(values), activation=self.activation
        )

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.connected(x, prepared, **into(out))

    def describe(self) -> str:
        return "connected                            %4d  ->  %4d" % (
            int(np.prod(self.in_shape)), self.outputs,
        )


@dataclass(frozen=True)
class MaxPool(Layer):
    size: int
    stride: int
    padding: int

    kind = "max"

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.maxpool(x, size=self.size, stride=self.stride, padding=self.padding, **into(out))

    def describe(self) -> str:
        return "max          %d x %d / %d  %4d x%4d x%4d   ->  %4d x%4d x%4d" % (
            self.size, self.size, self.stride, *_dims(self.in_shape), *_dims(self.out_shape),
        )


@dataclass(frozen=True)
class AvgPool(Layer):
    kind = "avg"

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.avgpool(x, **into(out))

    def describe(self) -> str:
        return "avg                     %4d x%4d x%4d   ->  %4d" % (
            *_dims(self.in_shape), self.out_shape[0],
        )


@dataclass(frozen=True)
class Softmax(Layer):
    groups: int
    temperature: float

    kind = "softmax"

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.softmax(x, groups=self.groups, temperature=self.temperature, **into(out))

    def describe(self) -> str:
        return "softmax                                        %4d" % int(np.prod(self.in_shape))


@dataclass(frozen=True)
class Shortcut(Layer):
    source: int
    alpha: float
    beta: float
    activation: str

    kind = "res"

    def sources(self) -> tuple[int, ...]:
        return (self.source,)

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.shortcut(
            x, outputs[self.source], alpha=self.alpha, beta=self.beta, activation=self.activation,
            **into(out),
        )

    def describe(self) -> str:
        return "res  %3d                %4d x%4d x%4d   ->  %4d x%4d x%4d" % (
            self.source, *_dims(self.in_shape), *_dims(self.out_shape),
        )


@dataclass(frozen=True)
class Route(Layer):
    layers: tuple[int, ...]

    kind = "route"

    def sources(self) -> tuple[int, ...]:
        return self.layers

    def forward(self, backend, prepared, x, outputs, out=None):
        if len(self.layers) == 1:
            return outputs[self.layers[0]]
        return backend.route([outputs[i] for i in self.layers], **into(out))

    def describe(self) -> str:
        return "route " + "".join(f" {i}" for i in self.layers)


@dataclass(frozen=True)
class Crop(Layer):
    scale: float
    shift: float

    kind = "crop"

    def forward(self, backend, prepared, x, outputs, out=None):
        _, height, width = self.out_shape
        return backend.crop(x, height=height, width=width, scale=self.scale, shift=self.shift, **into(out))

    def describe(self) -> str:
        c, h, w = self.in_shape
        return "Crop Layer: %d x %d -> %d x %d x %d image" % (h, w, self.out_shape[1], self.out_shape[2], c)


@dataclass(frozen=True)
class Dropout(Layer):
    probability: float

    kind = "dropout"

    def describe(self) -> str:
        n = int(np.prod(self.in_shape))
        return "dropout       p = %.2f               %4d  ->  %4d" % (self.probability, n, n)


@dataclass(frozen=True)
class Cost(Layer):
    kind = "cost"

    def describe(self) -> str:
        return "cost                                           %4d" % int(np.prod(self.in_shape))


@dataclass(frozen=True)
class Affine(Layer):
    """activation(x * scale[c] + bias[c]); values "scale" and "bias"."""

    activation: str

    kind = "affine"

    def prepare(self, backend, values):
        slope = {"slope": values["slope"]} if "slope" in values else {}  # PReLU
        return backend.prepare_affine(values["scale"], values["bias"], activation=self.activation, **slope)

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.affine(x, prepared, **into(out))

    def describe(self) -> str:
        return shape_line(f"affine {self.activation}", self)


@dataclass(frozen=True)
class BatchNormalization(Affine):
    """Darknet's [batchnorm] at inference: scales * (x - mean) / (sqrt(variance) + 1e-6), as
    its convolutions' batchnorm, with no bias; parameters scales, rolling mean and variance."""

    kind = "batchnorm"

    def params(self) -> list[ParamSpec]:
        return [ParamSpec(name, (self.in_shape[0],)) for name in ("scales", "rolling_mean", "rolling_variance")]

    def prepare(self, backend, values):
        scale, bias = fold_batchnorm(np.ones(self.in_shape[0]), np.zeros(self.in_shape[0]), _batchnorm(values))
        return backend.prepare_affine(scale, bias, activation=self.activation)

    def describe(self) -> str:
        return shape_line("batchnorm", self)


@dataclass(frozen=True)
class Activation(Layer):
    activation: str

    kind = "activation"

    def forward(self, backend, prepared, x, outputs, out=None):
        return backend.activate(x, self.activation, **into(out))

    def describe(self) -> str:
        return shape_line(self.activation, self)


# ---- builders: (section, index, input shape, shapes of all earlier layers) -> Layer ----------


def _positive(section: Section, key: str, default: int) -> int:
    value = section.integer(key, default)
    if value < 1:
        raise section.error(f"{key}={value}: expected a positive integer", key)
    return value


def _not_negative(section: Section, key: str, default: int) -> int:
    value = section.integer(key, default)
    if value < 0:
        raise section.error(f"{key}={value}: expected 0 or more (kern does not crop by negative padding)", key)
    return value


def _unsupported(section: Section, *keys: str) -> None:
    for key in keys:
        if section.integer(key, 0):
            raise section.error(f"{key}=1 is not supported (inference of float networks only)", key)


def _earlier(section: Section, key: str, index: int, value: int) -> int:
    """Darknet's rule: a negative layer reference is relative to the current layer."""
    absolute = index + value if value < 0 else value
    if not 0 <= absolute < index:
        raise section.error(f"{key}: layer {value} is not an earlier layer (this is layer {index})", key)
    return absolute


def _output_size(section: Section, size: int) -> int:
    if size < 1:
        raise section.error("input is too small for this window: output would be empty")
    return size


def build_convolutional(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    channels, height, width = shape
    filters = _positive(s, "filters", 1)
    size = _positive(s, "size", 1)
    stride = _positive(s, "stride", 1)
    padding = _not_negative(s, "padding", 0)
    if s.integer("pad", 0):
        padding = size // 2
    groups = _positive(s, "groups", 1)
    batch_normalize = bool(s.integer("batch_normalize", 0))
    activation = s.choice("activation", "logistic", ACTIVATIONS)
    _unsupported(s, "binary", "xnor", "flipped", "dot")
    if channels % groups or filters % groups:
        raise s.error(
            f"groups={groups} must divide both the input channels ({channels}) and filters ({filters})"
        )
    out_h = _output_size(s, conv_output_size(height, size, stride, padding))
    out_w = _output_size(s, conv_output_size(width, size, stride, padding))
    return Convolutional(
        index, shape, (filters, out_h, out_w), filters, size, stride, padding, groups,
        batch_normalize, activation,
    )


def build_connected(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    outputs = _positive(s, "output", 1)
    batch_normalize = bool(s.integer("batch_normalize", 0))
    activation = s.choice("activation", "logistic", ACTIVATIONS)
    return Connected(index, shape, (outputs, 1, 1), outputs, batch_normalize, activation)


def build_maxpool(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    channels, height, width = shape
    stride = _positive(s, "stride", 1)
    size = _positive(s, "size", stride)
    padding = _not_negative(s, "padding", size - 1)
    out_h = _output_size(s, maxpool_output_size(height, size, stride, padding))
    out_w = _output_size(s, maxpool_output_size(width, size, stride, padding))
    return MaxPool(index, shape, (channels, out_h, out_w), size, stride, padding)


def build_avgpool(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    return AvgPool(index, shape, (shape[0], 1, 1))


def build_softmax(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    groups = _positive(s, "groups", 1)
    temperature = s.number("temperature", 1.0)
    if s.has("tree"):
        raise s.error("tree= (hierarchical softmax) is not supported", "tree")
    inputs = int(np.prod(shape))
    if inputs % groups:
        raise s.error(f"groups={groups} does not divide the {inputs} inputs", "groups")
    if temperature <= 0:
        raise s.error(f"temperature={temperature}: expected a positive number", "temperature")
    return Softmax(index, shape, shape, groups, temperature)


def build_shortcut(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    if not s.has("from"):
        raise s.error("needs from=")
    source = _earlier(s, "from", index, s.integer("from", 0))
    activation = s.choice("activation", "linear", ACTIVATIONS)
    alpha, beta = s.number("alpha", 1.0), s.number("beta", 1.0)
    _, h_src, w_src = shapes[source]
    _, h_out, w_out = shape
    if w_src // w_out != h_src // h_out or w_out // w_src != h_out // h_src:
        raise s.error(
            f"from={source}: cannot add {w_src}x{h_src} to {w_out}x{h_out}: "
            "expected both sides scaled by the same factor"
        )
    return Shortcut(index, shape, shape, source, alpha, beta, activation)


def build_route(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    values = s.integers("layers")
    if not values:
        raise s.error("layers= names no layer", "layers")
    layers = tuple(_earlier(s, "layers", index, value) for value in values)
    _, height, width = shapes[layers[0]]
    for i in layers[1:]:
        if shapes[i][1:] != (height, width):
            raise s.error(
                f"layers: cannot concatenate layer {layers[0]} ({width}x{height}) with layer {i} "
                f"({shapes[i][2]}x{shapes[i][1]}): expected the same width and height",
                "layers",
            )
    channels = sum(shapes[i][0] for i in layers)
    return Route(index, shape, (channels, height, width), layers)


def build_crop(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    channels, height, width = shape
    crop_h = _positive(s, "crop_height", 1)
    crop_w = _positive(s, "crop_width", 1)
    if crop_h > height or crop_w > width:
        raise s.error(f"cannot crop {crop_w}x{crop_h} out of a {width}x{height} input")
    noadjust = bool(s.integer("noadjust", 0))
    scale, shift = (1.0, 0.0) if noadjust else (2.0, -1.0)
    return Crop(index, shape, (channels, crop_h, crop_w), scale, shift)


def build_dropout(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    return Dropout(index, shape, shape, s.number("probability", 0.5))


def build_cost(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    return Cost(index, shape, shape)


def build_batchnorm(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    return BatchNormalization(index, shape, shape, "linear")


def build_activation(s: Section, index: int, shape: Shape, shapes: list[Shape]) -> Layer:
    return Activation(index, shape, shape, s.choice("activation", "linear", ACTIVATIONS))


BUILDERS: dict[str, Callable[[Section, int, Shape, list[Shape]], Layer]] = {
    "convolutional": build_convolutional,
    "conv": build_convolutional,
    "connected": build_connected,
    "conn": build_connected,
    "maxpool": build_maxpool,
    "max": build_maxpool,
    "avgpool": build_avgpool,
    "avg": build_avgpool,
    "softmax": build_softmax,
    "soft": build_softmax,
    "shortcut": build_shortcut,
    "route": build_route,
    "crop": build_crop,
    "dropout": build_dropout,
    "cost": build_cost,
    "batchnorm": build_batchnorm,
    "activation": build_activation,
}

# Training-time options Darknet reads from these sections and inference ignores (nets/train_layers.py
# reads them when training); every layer may also carry COMMON_TRAINING_ONLY.
COMMON_TRAINING_ONLY = frozenset({"stopbackward", "learning_rate"})
TRAINING_ONLY = {
    "crop": frozenset({"flip", "angle", "saturation", "exposure", "shift"}),
    "cost": frozenset({"type", "scale", "ratio", "noobject_scale", "thresh"}),
    "softmax": frozenset({"noloss", "spatial"}),
}


def training_only(builder: str) -> frozenset[str]:
    """The options that layer kind (its builder's name, "convolutional") may carry for training."""
    return COMMON_TRAINING_ONLY | TRAINING_ONLY.get(builder, frozenset())
