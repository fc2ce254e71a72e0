"""The CUDA backend on cudasim (its real kernels and its real Python code, run on the CPU):
networks against the CPU backend. The op tests in test_ops.py run on cudasim too (`fast`);
tests/test_cudasim_catches.py shows that cudasim finds kernel bugs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nets
from nets.image import letterbox, load_image
from nets.layers import AvgPool, Connected, Convolutional, MaxPool
from nets.network import Network, NetworkSpec
from nets.weights import random_weights, read_weights
from tests.conftest import assert_close

pytestmark = pytest.mark.slow  # left out of the fast subset: pytest -m 'not slow'

REPO = Path(__file__).resolve().parent.parent
CFGS = sorted((REPO / "cfg").glob("*.cfg"))


def test_tiny_at_64x64_matches_cpu(cudasim, cpu, tmp_path):
    text = (REPO / "cfg" / "tiny.cfg").read_text().replace("width=224", "width=64").replace("height=224", "height=64")
    (tmp_path / "tiny64.cfg").write_text(text)
    spec = nets.load_spec(tmp_path / "tiny64.cfg")
    values = random_weights(spec.layers, seed=3)
    images = np.random.default_rng(4).random((2, *spec.input_shape), dtype=np.float32)
    expected = Network(spec, values, cpu).forward(images)
    assert_close(Network(spec, values, cudasim).forward(images), expected, 1e-4)


def distinct_layers():
    """One of each kind of layer the 18 cfgs use (type, window, stride, padding, groups,
    batchnorm, activation), on a small input with the channels of its first occurrence, cut
    to at most 64 (time on cudasim grows with channels; the kernels' paths do not)."""
    seen = {}
    for cfg in CFGS:
        for layer in nets.load_spec(cfg).layers:
            if isinstance(layer, Convolutional):
                key = ("conv", layer.size, layer.stride, layer.padding, layer.groups > 1, layer.batch_normalize, layer.activation,
                       layer.filters // layer.groups >= 16)
            elif isinstance(layer, MaxPool):
                key = ("max", layer.size, layer.stride, layer.padding)
            elif isinstance(layer, (Connected, AvgPool)):
                key = (layer.kind, getattr(layer, "activation", None))
            else:
                continue
            seen.setdefault(key, (cfg.stem, layer))
    return sorted(seen.items(), key=str)


def small(layer, size: int = 9):
    channels = min(layer.in_shape[0], 64)
    if isinstance(layer, Convolutional):
        groups = min(layer.groups, channels)
        filters = groups * max(1, min(layer.filters, 64) // groups)
        if layer.filters // layer.groups >= 16:  # keep CUDA's implicit GEMM path
            filters = groups * 16
        channels -= channels % groups
        size = max(size, layer.size)
        out = (size + 2 * layer.padding - layer.size) // layer.stride + 1
        return Convolutional(0, (channels, size, size), (filters, out, out), filters, layer.size, layer.stride,
                             layer.padding, groups, layer.batch_normalize, layer.activation)
    if isinstance(layer, MaxPool):
        out = (size + layer.padding - layer.size) // layer.stride + 1
        return MaxPool(0, (channels, size, size), (channels, out, out), layer.size, layer.stride, layer.padding)
    if isinstance(layer, Connected):
        return Connected(0, (channels, 3, 3), (50, 1, 1), 50, layer.batch_normalize, layer.activation)
    return AvgPool(0, (channels, size, size), (channels, 1, 1))


@pytest.mark.parametrize("where,layer", [(f"{cfg}:{layer.index}", layer) for _, (cfg, layer) in distinct_layers()],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_each_kind_of_layer_of_the_18_cfgs_matches_cpu(cudasim, cpu, where, layer):
    one = small(layer)
    spec = NetworkSpec(where, one.in_shape, (one,))
    values = random_weights(spec.layers, seed=5)
    images = np.random.default_rng(6).standard_normal((2, *spec.input_shape)).astype(np.float32)
    assert_close(Network(spec, values, cudasim).forward(images), Network(spec, values, cpu).forward(images), 1e-4)


def test_real_tiny_weights_on_dog_give_malamute(cudasim):
    spec = nets.load_spec(REPO / "cfg" / "tiny.cfg")
    net = Network(spec, read_weights(REPO / "weights" / "tiny.weights", spec.layers), cudasim)
    probs = net.predict(letterbox(load_image(REPO / "data" / "dog.jpg"), 224, 224)[None])[0]
    names = (REPO / "data" / "imagenet.shortnames.list").read_text().splitlines()
    assert names[int(np.argmax(probs))] == "malamute"
    assert abs(float(probs.max()) - 0.1418) < 0.002


def test_predict_cli_on_cudasim_and_without_a_compiler(cudasim):
    command = [sys.executable, "-m", "nets.predict", "cfg/darknet.cfg", "--random-weights", "--quiet",
               "--backend", "cudasim", "data/dog.jpg"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0 and "random weights, seed 0" in result.stdout, result.stderr
    no_compiler = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                                 env={"PATH": "/usr/bin:/bin", "KERN_CUDASIM_CXX": "no-such-c++"})
    assert no_compiler.returncode == 2
    assert no_compiler.stderr.strip() == (
        "error: backend 'cudasim' is not available: KERN_CUDASIM_CXX=no-such-c++: no such compiler"
    )
