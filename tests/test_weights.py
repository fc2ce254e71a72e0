"""The .weights reader and writer: both header versions, the transpose flag, bad sizes."""

import struct

import numpy as np
import pytest

import nets
from kern.errors import KernError
from nets.weights import Header, expected_bytes, random_weights, read_weights, write_weights

CFG = """[net]
width=6
height=6
channels=3

[convolutional]
filters=4
size=3
pad=1
batch_normalize=1
activation=leaky

[connected]
output=5
activation=linear
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "small.cfg"
    path.write_text(CFG)
    return nets.load_spec(path)


@pytest.mark.parametrize("header", [Header(0, 1), Header(0, 2, 5, 1 << 40), Header(1001, 2)])
def test_round_trip(tmp_path, spec, header):
    values = random_weights(spec.layers, seed=0)
    path = tmp_path / "w.weights"
    write_weights(path, spec.layers, values, header)
    assert path.stat().st_size == expected_bytes(spec.layers, header)
    for written, read in zip(values, read_weights(path, spec.layers)):
        for name in written:
            assert np.array_equal(written[name], read[name]), name


def test_transposed_connected_weights_are_read_transposed(tmp_path, spec):
    values = random_weights(spec.layers, seed=0)
    path = tmp_path / "w.weights"
    header = Header(0, 1001)  # minor >= 1000: transposed, and a 32-bit `seen` (16 bytes)
    write_weights(path, spec.layers, values, header)
    raw = np.fromfile(path, dtype="<f4", offset=header.size)
    # The connected weights follow its 5 biases, stored [inputs][outputs].
    conv_floats = sum(s.count for s in spec.layers[0].params())
    stored = raw[conv_floats + 5 : conv_floats + 5 + 5 * 144].reshape(144, 5)
    assert np.array_equal(stored.T, values[1]["weights"])


def test_short_file_names_the_layer(tmp_path, spec):
    path = tmp_path / "w.weights"
    write_weights(path, spec.layers, random_weights(spec.layers, seed=0))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(KernError, match=r"ends in layer 1 \(connected\)"):
        read_weights(path, spec.layers)


def test_long_file_counts_leftover_bytes(tmp_path, spec):
    path = tmp_path / "w.weights"
    write_weights(path, spec.layers, random_weights(spec.layers, seed=0))
    path.write_bytes(path.read_bytes() + b"\0" * 12)
    with pytest.raises(KernError, match="12 bytes left over"):
        read_weights(path, spec.layers)


def test_old_header_is_16_bytes(tmp_path, spec):
    path = tmp_path / "w.weights"
    floats = expected_bytes(spec.layers, Header(0, 1)) // 4 - 4
    path.write_bytes(struct.pack("<4i", 0, 1, 0, 7) + np.ones(floats, "<f4").tobytes())
    assert read_weights(path, spec.layers)[0]["biases"].tolist() == [1, 1, 1, 1]
