"""Whole networks in training on the float64 reference backend: the gradient that one
forward and backward pass leaves in every update buffer is the finite-difference gradient of
the pass's cost, for each kind of layer the cfgs train (batchnorm in its 'exact' variant,
kern/ref/batchnorm.py). Then Darknet's update rule, its schedule and its bookkeeping."""

import numpy as np
import pytest

from kern.ref.training import RefTraining
from nets.cfg import parse_cfg
from nets.network import build_network
from nets.solver import read_solver
from nets.training import TrainingNetwork, stream
from nets.weights import random_weights

HEAD = """[net]
batch={batch}
subdivisions={subdivisions}
height={h}
width={w}
channels=3
learning_rate=0.05
momentum=0.9
decay=0.0005
"""

BODIES = {
    "conv_bn_groups_stride": """
[convolutional]
batch_normalize=1
filters=6
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=6
size=3
groups=3
pad=1
activation=logistic
[convolutional]
filters=4
size=1
activation=linear
[avgpool]
[softmax]
""",
    "maxpool_route_shortcut": """
[convolutional]
filters=4
size=3
pad=1
activation=relu
[maxpool]
size=3
stride=2
[convolutional]
filters=4
size=1
activation=leaky
[shortcut]
from=-2
activation=leaky
[route]
layers=-1,-3
[convolutional]
filters=3
size=1
activation=linear
[avgpool]
[softmax]
""",
    "shortcut_across_scales": """
[convolutional]
filters=4
size=3
pad=1
activation=linear
[convolutional]
filters=6
size=3
stride=2
pad=1
activation=leaky
[shortcut]
from=-2
alpha=0.5
beta=2
activation=linear
[avgpool]
[softmax]
""",
    "connected_dropout": """
[crop]
crop_height=5
crop_width=6
flip=1
[convolutional]
filters=4
size=3
pad=1
activation=leaky
[dropout]
probability=0.3
[connected]
output=7
batch_normalize=1
activation=leaky
[connected]
output=5
activation=linear
[softmax]
""",
}


def make_network(tmp_path, body, batch=3, subdivisions=1, h=8, w=8, ops=None, seed=5, values=None):
    path = tmp_path / "net.cfg"
    path.write_text(HEAD.format(batch=batch, subdivisions=subdivisions, h=h, w=w) + body)
    sections = parse_cfg(path)
    spec = build_network(sections)
    ops = ops or RefTraining(np.float64, batchnorm_variant="exact")
    if values is None:
        values = random_weights(spec.layers, seed)
    return TrainingNetwork(spec, sections, values, ops, read_solver(sections[0]), seed=seed)


@pytest.mark.parametrize("body", sorted(BODIES))
def test_network_gradients_match_finite_differences(tmp_path, rng, body):
    net = make_network(tmp_path, BODIES[body])
    images = rng.random((3, *net.input_shape))
    labels = rng.integers(0, net.classes, 3)

    def cost():  # the same draws (dropout, crop) every time
        return net.forward_backward(images, labels, stream(0, 1, 1, 0))

    cost()
    grads = [{name: buffer.copy() for name, buffer in layer.updates.items()} for layer in net.layers]
    checked = 0
    for layer, grad in zip(net.layers, grads):
        for name, analytic in grad.items():
            param = layer.params[name]
            flat = param.reshape(-1)
            for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
                keep = flat[i]
                flat[i] = keep + 1e-6
                layer.changed()
                up = cost()
                flat[i] = keep - 1e-6
                layer.changed()
                down = cost()
                flat[i] = keep
                layer.changed()
                numeric = (up - down) / 2e-6
                assert abs(analytic.reshape(-1)[i] - numeric) <= 1e-5 * np.abs(analytic).max() + 1e-7, (
                    layer.layer.kind, name, i, analytic.reshape(-1)[i], numeric)
                checked += 1
    assert checked >= 12
