"""Darknet's [batchnorm] and [activation] sections (standalone, after a convolution without
batchnorm): against Darknet's own C code where Debian's darknet is installed, and against the
float64 reference on every fast backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kern.errors import KernError
from nets import make_backend
from nets.cfg import parse_cfg
from nets.network import Network, build_network
from nets.weights import random_weights, write_weights
from tests.conftest import assert_close
from tests.darknet_oracle import LIBRARY

ORACLE = Path(__file__).with_name("darknet_oracle.py")

CFG = """[net]
height=13
width=13
channels=3

[convolutional]
filters=7
size=3
stride=2
pad=1
activation=linear

[batchnorm]

[activation]
activation=leaky

[convolutional]
filters=5
size=1
activation=linear

[activation]
activation=logistic

[batchnorm]

[avgpool]

[softmax]
"""


def network(tmp_path, backend, dtype=np.float32, cfg=CFG):
    (tmp_path / "sections.cfg").write_text(cfg)
    spec = build_network(parse_cfg(tmp_path / "sections.cfg"))
    values = random_weights(spec.layers, seed=5)
    return spec, values, Network(spec, values, make_backend(backend) if dtype == np.float32
                                 else make_backend("ref", dtype=dtype))


def images(spec):
    return np.random.default_rng(2).uniform(0, 1, (3, *spec.input_shape)).astype(np.float32)


def test_sections_build_with_darknets_shapes(tmp_path):
    spec, _, _ = network(tmp_path, "ref")
    kinds = [layer.kind for layer in spec.layers]
    assert kinds == ["conv", "batchnorm", "activation", "conv", "activation", "batchnorm", "avg", "softmax"]
    assert [p.name for p in spec.layers[1].params()] == ["scales", "rolling_mean", "rolling_variance"]


def test_sections_match_the_float64_reference(tmp_path, fast):
    spec, _, net = network(tmp_path, fast.name)
    _, _, truth = network(tmp_path, "ref", np.float64)
    x = images(spec)
    before_softmax = len(spec.layers) - 2
    assert_close(net.forward(x, until=before_softmax), truth.forward(x, until=before_softmax), 1e-5)


@pytest.mark.skipif(not LIBRARY.exists(), reason="Darknet is not installed (apt-get install darknet)")
def test_activation_sections_match_darknets_c_code(tmp_path):
    """[activation] only: Darknet's CPU forward of a [batchnorm] section crashes (it copies its
    input into l.x, which make_batchnorm_layer never allocates; docs/darknet.md)."""
    spec, values, net = network(tmp_path, "cpu", cfg=CFG.replace("[batchnorm]", ""))
    write_weights(tmp_path / "sections.weights", spec.layers, values)
    x = images(spec)
    np.save(tmp_path / "images.npy", x)
    command = [sys.executable, str(ORACLE), "predict", str(tmp_path / "sections.cfg"),
               str(tmp_path / "sections.weights"), str(tmp_path / "images.npy"), str(tmp_path / "out.npy")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = np.load(tmp_path / "out.npy")
    assert np.abs(net.predict(x) - expected).max() <= 1e-5


def test_training_a_network_with_the_sections_says_not_yet(tmp_path):
    import nets

    (tmp_path / "sections.cfg").write_text(CFG.replace("[net]", "[net]\nbatch=2"))
    with pytest.raises(KernError, match=r"sections.cfg:\d+: .*does not train \[batchnorm\] layers yet"):
        nets.load(tmp_path / "sections.cfg", training=True)
