"""Each layer kind in training: its forward pass, which keeps what its backward reads, its
backward pass and its parameters' update, side by side (llm.c's and Darknet's layout). Only
backend ops touch the arrays (kern/backend.py's training ops), so the same code trains on the
NumPy reference, the CPU and, later, CUDA.

Gradients have the loss's sign (dL/dx; Darknet's `delta` is -dL/dx). A layer's backward adds
its input's gradient into `Gradients` (several layers may feed one: a route or shortcut
reading it too), and its parameters' gradients into their update buffers, which are
Darknet's momentum buffers: sgd_update then moves the parameters and decays the buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nets.cfg import Section
from nets.layers import (
    AvgPool,
    Connected,
    Convolutional,
    Cost,
    Crop,
    Dropout,
    Layer,
    MaxPool,
    Route,
    Shortcut,
    Softmax,
)
from nets.solver import Solver

NETWORK_INPUT = -1  # the index of the images, whose gradient nobody needs


@dataclass
class Pass:
    """What one forward and backward pass of a mini-batch shares: the labels (class indices),
    the generator of its random draws (dropout, crop) and the costs of its loss layers."""

    labels: np.ndarray
    rng: np.random.Generator
    costs: list[float] = field(default_factory=list)


class Gradients:
    """dL/d(output) of each layer, filled as the backward pass reaches it. The first
    contribution to a layer is stored as it comes, later ones are added (ops' `into`)."""

    def __init__(self) -> None:
        self._grads: dict[int, Any] = {}

    def pop(self, index: int) -> Any:
        return self._grads.pop(index, None)

    def get(self, index: int) -> Any:
        return self._grads.get(index)

    def set(self, index: int, value: Any) -> None:
        if index != NETWORK_INPUT:
            self._grads[index] = value

    def wanted(self, index: int) -> bool:
        return index != NETWORK_INPUT


class Trainable:
    """A layer in training. `params` are its arrays as the .weights file names them (backend
    arrays), `updates` the momentum buffers of the learned ones."""

    hands_on_gradient = False  # its backward stores its dy (or views of it) as an input's gradient

    def __init__(self, layer: Layer, section: Section, values: dict[str, np.ndarray], ops: Any) -> None:
        self.layer = layer
        self.params = {name: ops.parameter(value) for name, value in values.items()}
        self.updates: dict[str, Any] = {}
        self.rate_scale = section.number("learning_rate", 1.0)  # Darknet's per-layer learning_rate=
        self.stops_backward = bool(section.integer("stopbackward", 0))

    @property
    def input_index(self) -> int:
        return self.layer.index - 1 if self.layer.index > 0 else NETWORK_INPUT

    def forward(self, ops: Any, x: Any, outputs: dict[int, Any], step: Pass) -> Any:
        return x

    def backward(self, ops: Any, dy: Any, grads: Gradients) -> None:
        """Nothing flows back through a layer that does not say how."""

    def update(self, ops: Any, solver: Solver, batch_number: int, uniform: float) -> None:
        """Darknet's update: weights decay, biases and batchnorm scales do not."""
        if not self.updates:
            return
        rate, decay = solver.update_constants(batch_number, self.rate_scale, uniform)
        momentum = float(np.float32(solver.momentum))
        for name, buffer in self.updates.items():
            decays = decay if name == "weights" else 0.0
            ops.sgd_update(self.params[name], buffer, rate=rate, momentum=momentum, decay=decays)
        self.changed()

    def changed(self) -> None:
        """The parameters moved: drop anything prepared from them."""


class Linear(Trainable):
    """What convolutional and connected layers share: a linear part (the subclass's), then
    batchnorm in training mode or a bias, then the activation."""

    def __init__(self, layer, section, values, ops):
        super().__init__(layer, section, values, ops)
        names = ["weights", "biases"] + (["scales"] if layer.batch_normalize else [])
        self.updates = {name: ops.zeros(np.shape(values[name])) for name in names}

    def finish(self, ops: Any, z: Any) -> Any:
        layer, p = self.layer, self.params
        if layer.batch_normalize:
            self.z = z
            self.y, self.mean, self.variance = ops.batchnorm_forward(
                z, p["scales"], p["biases"], p["rolling_mean"], p["rolling_variance"], layer.activation
            )
        else:
            self.y = ops.bias_activate(z, p["biases"], layer.activation)
        return self.y

    def finish_backward(self, ops: Any, dy: Any) -> Any:
        """dL/dz, the gradient at the linear part's output; the bias and scale gradients go
        into their buffers."""
        layer = self.layer
        if layer.batch_normalize:
            return ops.batchnorm_backward(
                dy, self.y, self.z, self.mean, self.variance, self.params["scales"], self.params["biases"],
                layer.activation,
                scales_into=self.updates["scales"], biases_into=self.updates["biases"],
            )
        return ops.activation_backward(dy, self.y, layer.activation, biases_into=self.updates["biases"])


class TrainConvolutional(Linear):
    def __init__(self, layer, section, values, ops):
        super().__init__(layer, section, values, ops)
        self.prepared: Any = None  # the weights as the backend's conv ops read them
        self.stale: Any = None  # ... before the last update (the backend may reuse its arrays)

    def changed(self) -> None:
        if self.prepared is not None:
            self.stale, self.prepared = self.prepared, None

    def _weights(self, ops: Any) -> Any:
        if self.prepared is None:
            self.prepared = ops.conv_weights(self.params["weights"], self.layer.groups, previous=self.stale)
            self.stale = None
        return self.prepared

    def forward(self, ops, x, outputs, step):
        layer = self.layer
        self.x = x
        options = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
        if layer.batch_normalize:
            return self.finish(ops, ops.conv2d(x, self._weights(ops), **options))
        # Without batchnorm the bias and activation are fused into the convolution's store.
        bias = self.params["biases"]
        self.y = ops.conv2d(x, self._weights(ops), bias=bias, activation=layer.activation, **options)
        return self.y

    def backward(self, ops, dy, grads):
        layer = self.layer
        dz = self.finish_backward(ops, dy)
        ops.conv2d_backward_weights(
            self.x, dz, ksize=layer.size, stride=layer.stride, padding=layer.padding, groups=layer.groups,
            into=self.updates["weights"],
        )
        if grads.wanted(self.input_index):
            grads.set(self.input_index, ops.conv2d_backward_input(
                dz, self._weights(ops), in_shape=layer.in_shape, stride=layer.stride, padding=layer.padding,
                groups=layer.groups, into=grads.get(self.input_index),
            ))


class TrainConnected(Linear):
    def forward(self, ops, x, outputs, step):
        self.x = x
        return self.finish(ops, ops.connected(x, self.params["weights"]))

    def backward(self, ops, dy, grads):
        dz = self.finish_backward(ops, dy)
        ops.connected_backward_weights(self.x, dz, into=self.updates["weights"])
        if grads.wanted(self.input_index):
            grads.set(self.input_index, ops.connected_backward_input(
                dz, self.params["weights"], in_shape=self.layer.in_shape, into=grads.get(self.input_index)
            ))


class TrainMaxPool(Trainable):
    def forward(self, ops, x, outputs, step):
        layer = self.layer
        y, self.where = ops.maxpool_forward(x, size=layer.size, stride=layer.stride, padding=layer.padding)
        return y

    def backward(self, ops, dy, grads):
        if grads.wanted(self.input_index):
            grads.set(self.input_index, ops.maxpool_backward(
                dy, self.where, in_shape=self.layer.in_shape, into=grads.get(self.input_index)
            ))


class TrainAvgPool(Trainable):
    def forward(self, ops, x, outputs, step):
        return ops.avgpool(x)

    def backward(self, ops, dy, grads):
        if grads.wanted(self.input_index):
            grads.set(self.input_index, ops.avgpool_backward(
                dy, in_shape=self.layer.in_shape, into=grads.get(self.input_index)
            ))


class TrainSoftmax(Trainable):
    """The loss: softmax with cross-entropy against the labels (and a [cost] layer's squares
    after it, cost_scale). Its backward ignores any gradient from above, as Darknet's."""

    cost_scale: float | None = None

    def forward(self, ops, x, outputs, step):
        layer = self.layer
        p, cost, self.dx = ops.softmax_cross_entropy(
            x, step.labels, groups=layer.groups, temperature=layer.temperature, cost_scale=self.cost_scale
        )
        step.costs.append(cost)
        return p

    def backward(self, ops, dy, grads):
        if grads.wanted(self.input_index):
            grads.set(self.input_index, ops.add(grads.get(self.input_index), self.dx))


class TrainShortcut(Trainable):
    def forward(self, ops, x, outputs, step):
        layer = self.layer
        source = outputs[layer.source]
        self.y = ops.shortcut(x, source, alpha=layer.alpha, beta=layer.beta, activation=layer.activation)
        return self.y

    def backward(self, ops, dy, grads):
        layer = self.layer
        dx, dsource = ops.shortcut_backward(
            dy, self.y, source_shape=self.source_shape, alpha=layer.alpha, beta=layer.beta,
            activation=layer.activation,
        )
        grads.set(self.input_index, ops.add(grads.get(self.input_index), dx))
        grads.set(layer.source, ops.add(grads.get(layer.source), dsource))


class TrainRoute(Trainable):
    hands_on_gradient = True  # route_backward may return slices of dy

    def forward(self, ops, x, outputs, step):
        inputs = [outputs[i] for i in self.layer.layers]
        return inputs[0] if len(inputs) == 1 else ops.route(inputs)

    def backward(self, ops, dy, grads):
        for index, part in zip(self.layer.layers, ops.route_backward(dy, self.channels)):
            grads.set(index, ops.add(grads.get(index), part))


class TrainDropout(Trainable):
    """Kept values scaled by 1/(1 - probability), a fresh mask per pass from kern's seeded
    generator (Darknet draws glibc's rand()); identity at inference."""

    def forward(self, ops, x, outputs, step):
        probability = self.layer.probability
        keep = step.rng.random((step.labels.size, *self.layer.in_shape), dtype=np.float32) >= probability
        self.mask = ops.dropout_mask(keep, 1.0 / (1.0 - probability))
        return ops.dropout(x, self.mask)

    def backward(self, ops, dy, grads):
        if grads.wanted(self.input_index):
            dx = ops.dropout_backward(dy, self.mask)
            grads.set(self.input_index, ops.add(grads.get(self.input_index), dx))


class TrainCrop(Trainable):
    """Darknet's crop layer in training: a random window and a coin flip for the mirror, one
    draw for the whole mini-batch; no gradient flows back through it (as in Darknet)."""

    def __init__(self, layer, section, values, ops):
        super().__init__(layer, section, values, ops)
        self.flips = bool(section.integer("flip", 0))

    def forward(self, ops, x, outputs, step):
        layer = self.layer
        _, in_h, in_w = layer.in_shape
        _, height, width = layer.out_shape
        flip = self.flips and bool(step.rng.integers(2))
        top, left = int(step.rng.integers(in_h - height + 1)), int(step.rng.integers(in_w - width + 1))
        window = dict(height=height, width=width, top=top, left=left, flip=flip)
        return ops.crop(x, scale=layer.scale, shift=layer.shift, **window)


TRAINABLE = {
    Convolutional: TrainConvolutional, Connected: TrainConnected, MaxPool: TrainMaxPool,
    AvgPool: TrainAvgPool, Softmax: TrainSoftmax, Shortcut: TrainShortcut, Route: TrainRoute,
    Dropout: TrainDropout, Crop: TrainCrop, Cost: Trainable,
}


def trainable_layers(
    layers: tuple[Layer, ...], sections: list[Section], values: list[dict[str, np.ndarray]], ops: Any
) -> list[Trainable]:
    """The training counterpart of every layer; one line for a network kern cannot train."""
    for layer, section in zip(layers, sections):
        if type(layer) not in TRAINABLE:
            raise section.error(f"kern does not train [{section.name}] layers yet (it runs them)")
    trainables = [TRAINABLE[type(layer)](layer, s, v, ops) for layer, s, v in zip(layers, sections, values)]
    for t in trainables:
        if isinstance(t, TrainShortcut):
            t.source_shape = layers[t.layer.source].out_shape
        if isinstance(t, TrainRoute):
            t.channels = [layers[i].out_shape[0] for i in t.layer.layers]
    last = len(layers) - 1
    if isinstance(layers[last], Cost):
        section = sections[last]
        if section.text("type", "sse") != "sse":
            raise section.error("type=: kern trains the sum of squares (sse) cost only", "type")
        if last == 0 or not isinstance(layers[last - 1], Softmax):
            raise section.error("kern trains a [cost] layer only right after a [softmax]")
        trainables[last - 1].cost_scale = section.number("scale", 1.0)
        last -= 1
    if not isinstance(layers[last], Softmax):
        raise sections[last].error("kern trains classifiers: expected the network to end in [softmax] ([cost])")
    for layer, section in zip(layers[:last], sections[:last]):
        if isinstance(layer, (Softmax, Cost)):
            raise section.error("kern trains one loss, the last [softmax]: this one is not the last layer")
    return trainables
