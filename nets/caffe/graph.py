"""A Caffe deploy net (caffe.NetParameter) -> kern's layers (a NetworkSpec) and, for each of
them, the recipe that makes its parameters out of the .caffemodel's blobs (nets/caffe/blobs.py).

Caffe's net is a graph of named blobs; kern's is a list of layers, each reading the one before
(and, for routes, shortcuts and channel scaling, earlier ones by index). The translation:
- BatchNorm and Scale after a Convolution or InnerProduct whose output nothing else reads are
  folded into its weights (exact: both are per-channel affine maps of a linear map), and so are
  a ReLU or Sigmoid after it (its activation); elsewhere (pre-activation ResNets, DenseNet) they
  become one channel-affine layer with its activation.
- Eltwise SUM is Darknet's shortcut (with Caffe's coefficients as its alpha and beta), a ReLU
  after it its activation; Concat is a route; Slice one channel-slice layer per top; a layer
  whose first input is not the previous layer's output reads it through a route of one layer
  (nothing copied); Dropout, Flatten and Reshape to (N, C) pass their input through.
- Pooling: MAX is Darknet's max pool with the total padding that gives Caffe's output size
  (Caffe's windows start at -pad; Darknet's at -padding/2), AVE over the whole input the global
  average, AVE over windows a depthwise convolution with weights 1/k^2 where every window's
  divisor is k^2 (Caffe counts padded cells up to H + pad: docs/caffe.md).
Anything else gets one line naming the file, the layer's line, name and type, and why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kern.errors import KernError
from nets.channel_layers import LRN, Combine, PoolWindow, ScaleChannels, SliceChannels
from nets.layers import (
    Activation,
    Affine,
    AvgPool,
    Connected,
    Convolutional,
    Layer,
    MaxPool,
    RectangularConvolutional,
    Route,
    Shortcut,
    Softmax,
)
from nets.memory import INPUT  # the network's input, as a producer
from nets.network import NetworkSpec

Shape = tuple[int, int, int]

# Caffe's V1 layer type enum (V1LayerParameter.LayerType) -> the V2 type string.
V1_TYPES = {
    "CONCAT": "Concat", "CONVOLUTION": "Convolution", "DROPOUT": "Dropout", "ELTWISE": "Eltwise",
    "FLATTEN": "Flatten", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "POOLING": "Pooling",
    "RELU": "ReLU", "SIGMOID": "Sigmoid", "SLICE": "Slice", "SOFTMAX": "Softmax", "SPLIT": "Split",
    "TANH": "TanH", "DATA": "Data", "IMAGE_DATA": "ImageData", "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "ACCURACY": "Accuracy",
}
SUPPORTED = (
    "Convolution ConvolutionDepthwise BatchNorm Scale ReLU PReLU Sigmoid TanH Pooling LRN Eltwise Concat "
    "Slice Split InnerProduct Softmax Dropout Flatten Reshape Axpy Input"
).split()
FOLDS_INTO = {"conv", "connected", "affine"}  # what BatchNorm and Scale fold into


@dataclass
class CaffeLayer:
    """One layer of the prototxt, V1 or V2 alike."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    message: Any  # the LayerParameter or V1LayerParameter (its *_param fields)
    line: int


@dataclass
class Node:
    """A kern layer being built: options change while later Caffe layers fold into it."""

    kind: str
    inputs: list[int]  # producers (node indices or INPUT); the first is the layer's x
    shape: Shape
    options: dict[str, Any] = field(default_factory=dict)
    recipe: list[tuple] = field(default_factory=list)  # how its parameters are made
    activation: str = "linear"


@dataclass(frozen=True)
class CaffeNet:
    """A prototxt translated: the spec, a recipe per kern layer, and the blob shapes each Caffe
    layer with parameters must have (for checking a .caffemodel and writing random ones)."""

    spec: NetworkSpec
    recipes: tuple[tuple[tuple, ...], ...]
    blob_shapes: dict[str, list[tuple[int, ...]]]
    top_shapes: dict[str, Shape]  # each Caffe layer's first top, (C, H, W) as kern holds it


def caffe_layers(net: Any, text: str) -> list[CaffeLayer]:
    """The net's layers (V2 `layer` or V1 `layers`), with the line each starts on."""
    lines = _layer_lines(text)
    found = []
    if len(net.layer):
        for i, layer in enumerate(net.layer):
            found.append(CaffeLayer(layer.name, layer.type, list(layer.bottom), list(layer.top), layer,
                                    lines[i] if i < len(lines) else 0))
    else:
        enum = net.layers[0].DESCRIPTOR.fields_by_name["type"].enum_type if len(net.layers) else None
        for i, layer in enumerate(net.layers):
            kind = enum.values_by_number[layer.type].name
            found.append(CaffeLayer(layer.name, V1_TYPES.get(kind, kind.title()), list(layer.bottom),
                                    list(layer.top), layer, lines[i] if i < len(lines) else 0))
    return found


def _layer_lines(text: str) -> list[int]:
    """The line of each `layer {` / `layers {` block's opening, in order."""
    return [text.count("\n", 0, m.start()) + 1 for m in re.finditer(r"(?m)^\s*layers?\s*\{", text)]


def translate(net: Any, path: str | Path, text: str) -> CaffeNet:
    return _Builder(str(path), caffe_layers(net, text)).build(net)


class _Builder:
    def __init__(self, path: str, layers: list[CaffeLayer]) -> None:
        self.path = path
        self.layers = layers
        self.nodes: list[Node] = []
        self.blob: dict[str, int] = {}  # blob name -> its producer now (node index or INPUT)
        self.shape_of: dict[int, Shape] = {}
        self.top_shapes: dict[str, Shape] = {}
        self.blob_shapes: dict[str, list[tuple[int, ...]]] = {}
        self.readers = self._count_readers()

    # ---- errors and small helpers
    def error(self, layer: CaffeLayer, what: str) -> KernError:
        where = f"{self.path}:{layer.line}" if layer.line else self.path
        return KernError(f'{where}: layer "{layer.name}" ({layer.type}): {what}')

    def _count_readers(self) -> dict[tuple[str, int], int]:
        """How many layers read each version of each blob: (name, index of the layer that wrote
        it, -1 for the input) -> readers. In-place layers write a new version of the same name."""
        writer: dict[str, int] = {}
        readers: dict[tuple[str, int], int] = {}
        for i, layer in enumerate(self.layers):
            for bottom in layer.bottoms:
                key = (bottom, writer.get(bottom, -1))
                readers[key] = readers.get(key, 0) + 1
            for top in layer.tops:
                writer[top] = i
        return readers

    def _add(self, node: Node) -> int:
        self.nodes.append(node)
        index = len(self.nodes) - 1
        self.shape_of[index] = node.shape
        return index

    # ---- the translation
    def build(self, net: Any) -> CaffeNet:
        input_shape = self.input_shape = self._input(net)
        writer: dict[str, int] = {}
        for i, layer in enumerate(self.layers):
            if layer.type == "Input":
                writer.update((top, i) for top in layer.tops)
                continue
            for bottom in layer.bottoms:
                if bottom not in self.blob:
                    raise self.error(layer, f'bottom "{bottom}" is not the top of an earlier layer')
            if layer.type not in SUPPORTED:
                raise self.error(layer, f"kern cannot run this layer type; it runs {', '.join(SUPPORTED)}")
            single_reader = all(self.readers.get((b, writer.get(b, -1)), 0) == 1 for b in layer.bottoms)
            producers = [self.blob[b] for b in layer.bottoms]
            tops = getattr(self, "_" + layer.type.lower())(layer, producers, single_reader)
            for top, producer in zip(layer.tops, tops):
                self.blob[top] = producer
                writer[top] = i
            if layer.tops:
                self.top_shapes[layer.name] = self._shape(tops[0])
        if not self.nodes:
            raise KernError(f"{self.path}: no layers kern can run after the input")
        last = self.blob[self.layers[-1].tops[0]] if self.layers[-1].tops else len(self.nodes) - 1
        layers, recipes = self._linearize(input_shape, last)
        spec = NetworkSpec(self.path, input_shape, tuple(layers), pixel_check=False)
        return CaffeNet(spec, tuple(recipes), self.blob_shapes, self.top_shapes)

    def _input(self, net: Any) -> Shape:
        """(C, H, W) from `input` + `input_dim` or `input_shape`, or an Input layer."""
        dims: list[int] = []
        name = None
        if len(net.input):
            name = net.input[0]
            dims = list(net.input_shape[0].dim) if len(net.input_shape) else list(net.input_dim)[:4]
        else:
            for layer in self.layers:
                if layer.type == "Input":
                    name = layer.tops[0]
                    shapes = layer.message.input_param.shape
                    dims = list(shapes[0].dim) if len(shapes) else []
                    break
        if len(net.input) > 1 or (name is None and not dims):
            raise KernError(f"{self.path}: expected one input (input_dim, input_shape or an Input layer)")
        if len(dims) != 4 or min(dims[1:]) < 1:
            raise KernError(f"{self.path}: input {name!r} has shape {dims}: expected N, C, H, W")
        self.blob[name] = INPUT
        return tuple(int(d) for d in dims[1:])  # type: ignore[return-value]

    def _shape(self, producer: int) -> Shape:
        return self.input_shape if producer == INPUT else self.shape_of[producer]

    def _foldable(self, producer: int, single_reader: bool, kinds: set[str]) -> Node | None:
        """The node a per-channel layer can fold into: it made the only input, nothing else
        reads it, and no activation has been applied yet."""
        if producer == INPUT or not single_reader:
            return None
        node = self.nodes[producer]
        plain = node.activation == "linear" and not node.options.get("prelu")
        return node if node.kind in kinds and plain else None

    # ---- one method per Caffe type: (layer, producers of its bottoms, single reader) -> producers of its tops
    def _convolution(self, layer, producers, single_reader):
        p = layer.message.convolution_param
        channels, height, width = self._shape(producers[0])
        kernel = _pair(layer, self, p.kernel_size, p.kernel_h, p.kernel_w, "kernel", None)
        pad = _pair(layer, self, p.pad, p.pad_h, p.pad_w, "pad", 0)
        stride = _pair(layer, self, p.stride, p.stride_h, p.stride_w, "stride", 1)
        groups = p.group if p.HasField("group") else 1
        filters = p.num_output
        if filters < 1 or groups < 1 or channels % groups or filters % groups:
            raise self.error(layer, f"num_output {filters} and group {groups} for {channels} input channels: "
                             "expected group to divide both")
        dilation = _pair(layer, self, p.dilation, 0, 0, "dilation", 1)
        span = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))  # the window a dilated kernel spans
        out_h = (height + 2 * pad[0] - span[0]) // stride[0] + 1
        out_w = (width + 2 * pad[1] - span[1]) // stride[1] + 1
        if out_h < 1 or out_w < 1:
            raise self.error(layer, f"a {span[0]}x{span[1]} window does not fit the {width}x{height} input")
        shapes = [(filters, channels // groups, *kernel)] + ([(filters,)] if p.bias_term else [])
        self.blob_shapes[layer.name] = shapes
        recipe = [("conv", layer.name, p.bias_term)]
        if dilation != (1, 1):  # the taps every d-th cell of a kernel of zeros spanning d(k-1)+1
            recipe.append(("dilate", *dilation))
        if stride[0] != stride[1]:
            raise self.error(layer, f"stride {stride[0]},{stride[1]}: kern's convolutions take one stride")
        options = dict(filters=filters, size=span[0], stride=stride[0], padding=pad[0], groups=groups)
        if span[0] != span[1] or pad[0] != pad[1]:  # Inception's 1x7 and 7x1
            options.update(size_w=span[1], padding_w=pad[1])
        return [self._add(Node("conv", [producers[0]], (filters, out_h, out_w), options, recipe))]

    _convolutiondepthwise = _convolution

    def _innerproduct(self, layer, producers, single_reader):
        p = layer.message.inner_product_param
        if p.transpose or (p.HasField("axis") and p.axis != 1):
            raise self.error(layer, "transpose and axis other than 1 are not supported")
        inputs = math.prod(self._shape(producers[0]))
        self.blob_shapes[layer.name] = [(p.num_output, inputs)] + ([(p.num_output,)] if p.bias_term else [])
        node = Node("connected", [producers[0]], (p.num_output, 1, 1), {"outputs": p.num_output},
                    [("ip", layer.name, p.bias_term)])
        return [self._add(node)]

    def _batchnorm(self, layer, producers, single_reader):
        p = layer.message.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            raise self.error(layer, "use_global_stats: false (batch statistics): kern runs deploy nets")
        channels = self._shape(producers[0])[0]
        self.blob_shapes[layer.name] = [(channels,), (channels,), (1,)]
        return self._per_channel(layer, producers, single_reader, ("bn", layer.name, p.eps))

    def _scale(self, layer, producers, single_reader):
        p = layer.message.scale_param
        if len(producers) == 2:  # x * (one value per image and channel)
            return self._scale_by(layer, producers, None)
        if p.HasField("axis") and p.axis != 1 or p.HasField("num_axes") and p.num_axes != 1:
            raise self.error(layer, "expected a scale per channel (axis 1, num_axes 1)")
        channels = self._shape(producers[0])[0]
        self.blob_shapes[layer.name] = [(channels,)] + ([(channels,)] if p.bias_term else [])
        return self._per_channel(layer, producers, single_reader, ("scale", layer.name, p.bias_term))

    def _per_channel(self, layer, producers, single_reader, step):
        node = self._foldable(producers[0], single_reader, FOLDS_INTO)
        if node is not None:
            node.recipe.append(step)
            return [producers[0]]
        shape = self._shape(producers[0])
        return [self._add(Node("affine", [producers[0]], shape, {}, [("affine", shape[0]), step]))]

    def _activation(self, layer, producers, single_reader, activation):
        node = self._foldable(producers[0], single_reader, FOLDS_INTO | {"shortcut"})
        if node is not None:
            node.activation = activation
            return [producers[0]]
        shape = self._shape(producers[0])
        return [self._add(Node("activation", [producers[0]], shape, activation=activation))]

    def _relu(self, layer, producers, single_reader):
        slope = layer.message.relu_param.negative_slope
        if slope not in (0.0, 0.1):
            raise self.error(layer, f"negative_slope {slope:g}: kern has ReLU (0) and leaky ReLU (0.1)")
        return self._activation(layer, producers, single_reader, "relu" if slope == 0 else "leaky")

    def _sigmoid(self, layer, producers, single_reader):
        return self._activation(layer, producers, single_reader, "logistic")

    def _tanh(self, layer, producers, single_reader):
        return self._activation(layer, producers, single_reader, "tanh")

    def _prelu(self, layer, producers, single_reader):
        """A slope per channel below 0 (one for all with channel_shared): a channel-affine layer
        of its own, that nothing folds into afterwards."""
        shared = layer.message.prelu_param.channel_shared
        shape = self._shape(producers[0])
        self.blob_shapes[layer.name] = [(1,) if shared else (shape[0],)]
        recipe = [("affine", shape[0]), ("prelu", layer.name, shared)]
        return [self._add(Node("affine", [producers[0]], shape, {"prelu": True}, recipe))]

    def _pooling(self, layer, producers, single_reader):
        p = layer.message.pooling_param
        channels, height, width = self._shape(producers[0])
        method = p.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[p.pool].name
        if p.global_pooling:
            kernel, pad, stride = (height, width), (0, 0), (1, 1)
        else:
            kernel = _pair(layer, self, [p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h,
                           p.kernel_w, "kernel", None)
            pad = _pair(layer, self, [p.pad] if p.pad else [], p.pad_h, p.pad_w, "pad", 0)
            stride = _pair(layer, self, [p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w,
                           "stride", 1)
        ceil = p.ceil_mode and p.round_mode == p.CEIL
        out_h = _pooled_size(height, kernel[0], pad[0], stride[0], ceil)
        out_w = _pooled_size(width, kernel[1], pad[1], stride[1], ceil)
        if min(out_h, out_w) < 1:
            raise self.error(layer, f"a {kernel[0]}x{kernel[1]} window does not fit the {width}x{height} input")
        out = (channels, out_h, out_w)
        whole = kernel == (height, width) and pad == (0, 0) and (out_h, out_w) == (1, 1)
        if method == "AVE" and whole:
            return [self._add(Node("avgpool", [producers[0]], out))]
        square = kernel[0] == kernel[1] and pad[0] == pad[1] and stride[0] == stride[1]
        if method == "MAX" and square:
            size, step = kernel[0], stride[0]
            for total in (2 * pad[0], 2 * pad[0] + 1):  # window start -total//2 == -pad
                if (height + total - size) // step + 1 == out_h and (width + total - size) // step + 1 == out_w:
                    options = dict(size=size, stride=step, padding=total)
                    return [self._add(Node("maxpool", [producers[0]], out, options))]
        if method == "AVE" and square and (out_h - 1) * stride[0] + kernel[0] <= height + 2 * pad[0] \
                and (out_w - 1) * stride[1] + kernel[1] <= width + 2 * pad[1]:
            options = dict(filters=channels, size=kernel[0], stride=stride[0], padding=pad[0], groups=channels)
            return [self._add(Node("conv", [producers[0]], out, options, [("average", kernel[0], channels)]))]
        if method not in ("MAX", "AVE"):
            raise self.error(layer, f"{method} pooling is not supported (MAX and AVE are)")
        # Anything else (a window cut by in + pad, non-square windows, MAX strides of 3 and more):
        # Caffe's rule as it is, on its own kernel.
        options = dict(method=method.lower(), kernel=kernel, stride=stride, pad=pad)
        return [self._add(Node("pool_window", [producers[0]], out, options))]

    def _lrn(self, layer, producers, single_reader):
        p = layer.message.lrn_param
        if p.norm_region != p.ACROSS_CHANNELS:
            raise self.error(layer, "norm_region WITHIN_CHANNEL is not supported (ACROSS_CHANNELS is)")
        options = dict(size=p.local_size, alpha=p.alpha, beta=p.beta, k=p.k)
        return [self._add(Node("lrn", [producers[0]], self._shape(producers[0]), options))]

    def _eltwise(self, layer, producers, single_reader):
        p = layer.message.eltwise_param
        operation = p.DESCRIPTOR.fields_by_name["operation"].enum_type.values_by_number[p.operation].name
        if operation != "SUM":
            return self._combine(layer, producers, operation.lower())
        coeffs = list(p.coeff) or [1.0] * len(producers)
        if len(coeffs) != len(producers) or len(producers) < 2:
            raise self.error(layer, f"expected 2+ bottoms, a coeff each: got {len(producers)}, {len(coeffs)}")
        shapes = {self._shape(q) for q in producers}
        if len(shapes) > 1:
            raise self.error(layer, f"cannot add blobs of shapes {sorted(shapes)}: expected one shape")
        # The last producer is x when it is the latest node (a convolution fuses with the add).
        order = sorted(range(len(producers)), key=lambda i: producers[i] == len(self.nodes) - 1)
        x, source = order[-1], order[-2]
        shape = self._shape(producers[x])
        options = dict(source=producers[source], alpha=coeffs[x], beta=coeffs[source])
        top = self._add(Node("shortcut", [producers[x], producers[source]], shape, options))
        for i in reversed(order[:-2]):
            options = dict(source=producers[i], alpha=1.0, beta=coeffs[i])
            top = self._add(Node("shortcut", [top, producers[i]], shape, options))
        return [top]

    def _combine(self, layer, producers, operation):
        """Eltwise PROD or MAX: a chain of two-input layers, each reading the previous one and
        the next bottom."""
        shapes = {self._shape(q) for q in producers}
        if len(shapes) > 1 or len(producers) < 2:
            raise self.error(layer, f"cannot combine blobs of shapes {sorted(shapes)}: expected 2+, one shape")
        shape = shapes.pop()
        top = producers[0]
        for other in producers[1:]:
            top = self._add(Node("combine", [top, other], shape, dict(other=other, operation=operation)))
        return [top]

    def _concat(self, layer, producers, single_reader):
        p = layer.message.concat_param
        axis = p.axis if p.HasField("axis") else (p.concat_dim if p.HasField("concat_dim") else 1)
        if axis != 1:
            raise self.error(layer, f"concatenation along axis {axis}: kern concatenates channels (axis 1)")
        if len(producers) == 1:
            return producers
        sizes = {self._shape(q)[1:] for q in producers}
        if len(sizes) > 1:
            raise self.error(layer, f"cannot concatenate maps of sizes {sorted(sizes)}: expected one H x W")
        channels = sum(self._shape(q)[0] for q in producers)
        shape = (channels, *self._shape(producers[0])[1:])
        return [self._add(Node("route", list(producers), shape))]

    def _slice(self, layer, producers, single_reader):
        p = layer.message.slice_param
        axis = p.axis if p.HasField("axis") else (p.slice_dim if p.HasField("slice_dim") else 1)
        channels, height, width = self._shape(producers[0])
        if axis != 1:
            raise self.error(layer, f"slicing along axis {axis}: kern slices channels (axis 1)")
        points = list(p.slice_point)
        if not points:
            if channels % len(layer.tops):
                raise self.error(layer, f"{channels} channels do not split into {len(layer.tops)} equal tops")
            points = [channels // len(layer.tops) * i for i in range(1, len(layer.tops))]
        bounds = [0, *points, channels]
        if len(bounds) != len(layer.tops) + 1 or bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise self.error(layer, f"slice_point {points} for {channels} channels and {len(layer.tops)} tops")
        return [
            self._add(Node("slice", [producers[0]], (end - first, height, width), {"first": first}))
            for first, end in zip(bounds, bounds[1:])
        ]

    def _split(self, layer, producers, single_reader):
        return producers * len(layer.tops)

    def _dropout(self, layer, producers, single_reader):
        return producers

    def _flatten(self, layer, producers, single_reader):
        # kern's shapes stay (C, H, W): InnerProduct and Softmax read them flattened in Caffe's order.
        return producers

    def _reshape(self, layer, producers, single_reader):
        dims = list(layer.message.reshape_param.shape.dim)
        channels, height, width = self._shape(producers[0])
        flat = channels * height * width
        keep = [channels, height, width]
        out = [keep[i] if d == 0 and i < 3 else d for i, d in enumerate(dims[1:])]
        if out.count(-1) == 1:
            known = math.prod(d for d in out if d != -1)
            out[out.index(-1)] = flat // known if known and flat % known == 0 else 0
        if math.prod(out) != flat or not out or out[0] != flat and (height, width) != (1, 1):
            raise self.error(layer, f"reshape of {channels}x{height}x{width} to {dims}: kern flattens only")
        return producers

    def _softmax(self, layer, producers, single_reader):
        p = layer.message.softmax_param
        shape = self._shape(producers[0])
        if p.HasField("axis") and p.axis != 1 or shape[1:] != (1, 1) and not self._flattened(layer):
            raise self.error(layer, f"softmax over the channels of a {shape[2]}x{shape[1]} map (1x1 maps only)")
        return [self._add(Node("softmax", [producers[0]], shape))]

    def _flattened(self, layer: CaffeLayer) -> bool:
        """Is the softmax's input the output of a Flatten or Reshape (Caffe then takes it whole)?"""
        bottom = layer.bottoms[0]
        return any(other.type in ("Flatten", "Reshape") and bottom in other.tops for other in self.layers)

    def _axpy(self, layer, producers, single_reader):
        if len(producers) != 3:
            raise self.error(layer, f"expected 3 bottoms (a, x, y: a * x + y), got {len(producers)}")
        return self._scale_by(layer, [producers[1], producers[0], producers[2]], producers[2])

    def _scale_by(self, layer, producers, add):
        x, factors = producers[0], producers[1]
        c, h, w = self._shape(x)
        if self._shape(factors) != (c, 1, 1) or (add is not None and self._shape(add) != (c, h, w)):
            raise self.error(layer, f"expected factors of shape {c}x1x1 for a {c}x{h}x{w} input, "
                             f"got {'x'.join(map(str, self._shape(factors)))}")
        inputs = [x, factors] + ([add] if add is not None else [])
        return [self._add(Node("scale_channels", inputs, (c, h, w), dict(factors=factors, add=add)))]

    # ---- nodes -> kern's layers in order
    def _linearize(self, input_shape: Shape, last: int) -> tuple[list[Layer], list[tuple]]:
        """One kern layer per node (a route of one layer before a node whose input is not the
        previous layer's output); node indices become layer indices. Where the input is read
        by more than the first layer, a linear activation first copies it into a layer that
        later ones can name (kern's networks read their input once)."""
        layers: list[Layer] = []
        recipes: list[tuple] = []
        index_of: dict[int, int] = {}
        readers = [n for n, node in enumerate(self.nodes) if INPUT in node.inputs]
        if readers and readers != [0] or self.nodes[0].inputs[0] != INPUT:
            layers.append(Activation(0, input_shape, input_shape, "linear"))
            recipes.append(())
            index_of[INPUT] = 0
        for n, node in enumerate(self.nodes):
            x = node.inputs[0]
            x_index = index_of.get(x, INPUT)
            reads_previous = node.kind == "route" or x_index == (len(layers) - 1 if layers else INPUT)
            if not reads_previous:  # a route reads its inputs by index
                shape = input_shape if x == INPUT else self.shape_of[x]
                layers.append(Route(len(layers), shape, shape, (x_index,)))
                recipes.append(())
            in_shape = input_shape if x == INPUT else self.shape_of[x]
            layers.append(self._layer(node, len(layers), in_shape, index_of))
            recipes.append(tuple(node.recipe))
            index_of[n] = len(layers) - 1
        if index_of[last] != len(layers) - 1:
            layers.append(Route(len(layers), self.shape_of[last], self.shape_of[last], (index_of[last],)))
            recipes.append(())
        return layers, recipes

    @staticmethod
    def _layer(node: Node, index: int, in_shape: Shape, index_of: dict[int, int]) -> Layer:
        o = node.options
        out = node.shape
        if node.kind == "conv":
            conv = (o["filters"], o["size"], o["stride"], o["padding"], o["groups"], False, node.activation)
            if "size_w" in o:
                return RectangularConvolutional(index, in_shape, out, *conv, o["size_w"], o["padding_w"])
            return Convolutional(index, in_shape, out, *conv)
        if node.kind == "connected":
            return Connected(index, in_shape, out, o["outputs"], False, node.activation)
        if node.kind == "affine":
            return Affine(index, in_shape, out, node.activation)
        if node.kind == "activation":
            return Activation(index, in_shape, out, node.activation)
        if node.kind == "maxpool":
            return MaxPool(index, in_shape, out, o["size"], o["stride"], o["padding"])
        if node.kind == "avgpool":
            return AvgPool(index, in_shape, out)
        if node.kind == "lrn":
            return LRN(index, in_shape, out, o["size"], o["alpha"], o["beta"], o["k"])
        if node.kind == "shortcut":
            return Shortcut(index, in_shape, out, index_of[o["source"]], o["alpha"], o["beta"], node.activation)
        if node.kind == "route":
            return Route(index, in_shape, out, tuple(index_of[i] for i in node.inputs))
        if node.kind == "slice":
            return SliceChannels(index, in_shape, out, o["first"])
        if node.kind == "softmax":
            return Softmax(index, in_shape, out, 1, 1.0)
        if node.kind == "pool_window":
            return PoolWindow(index, in_shape, out, o["method"], o["kernel"], o["stride"], o["pad"])
        if node.kind == "combine":
            return Combine(index, in_shape, out, index_of[o["other"]], o["operation"])
        if node.kind == "scale_channels":
            add = None if o["add"] is None else index_of[o["add"]]
            return ScaleChannels(index, in_shape, out, index_of[o["factors"]], add)
        raise AssertionError(node.kind)


def _pair(layer: CaffeLayer, builder: _Builder, values, height: int, width: int, what: str,
          default: int | None) -> tuple[int, int]:
    """Caffe's (h, w) of a kernel, pad or stride: `x_h`/`x_w` where set, else the repeated
    field (one value for both, or two), else the default."""
    is_conv = layer.type.startswith("Convolution")
    message = layer.message.convolution_param if is_conv else layer.message.pooling_param
    fields = message.DESCRIPTOR.fields_by_name
    if f"{what}_h" in fields and (message.HasField(f"{what}_h") or message.HasField(f"{what}_w")):
        return int(height), int(width)
    values = list(values)
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    if not values and default is not None:
        return default, default
    raise builder.error(layer, f"expected {what}_size, or {what}_h and {what}_w" if what == "kernel"
                        else f"expected one or two values of {what}")


def _pooled_size(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    """Caffe's pooling output size: rounded up (or down), and a last window that would start
    in the padding past the input dropped."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out
