"""All 18 ImageNet cfgs: build, table, random weights through our writer and reader, forward on
`cpu`, and agreement with a float64 `ref` forward within 1e-4 of the largest value."""

from pathlib import Path

import numpy as np
import pytest

import nets
from kern import get_backend
from nets.network import Network
from nets.weights import random_weights, read_weights, write_weights
from tests.conftest import assert_close

CFGS = sorted(Path(__file__).resolve().parent.parent.joinpath("cfg").glob("*.cfg"))


def test_all_eighteen_cfgs_are_shipped():
    assert len(CFGS) == 18


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_cfg_runs_and_matches_float64_reference(cfg, tmp_path, cpu, ref64, rng):
    spec = nets.load_spec(cfg)
    table = spec.table()
    assert len(table.splitlines()) == len(spec.layers) + 2 and "Total BFLOPs" in table
    path = tmp_path / "random.weights"
    values = random_weights(spec.layers, seed=1)
    write_weights(path, spec.layers, values)
    read_back = read_weights(path, spec.layers)
    for written, read in zip(values, read_back):
        assert written.keys() == read.keys()
        assert all(np.array_equal(written[k], read[k]) for k in written)
    del values
    images = rng.random((1, *spec.input_shape), dtype=np.float32)
    before_softmax = len(spec.layers) - 1 - [layer.kind for layer in spec.layers][::-1].index("softmax") - 1
    fast = Network(spec, read_back, cpu)
    truth = Network(spec, read_back, ref64)
    logits = fast.forward(images, until=before_softmax)
    assert_close(logits, truth.forward(images, until=before_softmax), 1e-4)
    probs = fast.predict(images)
    assert probs.shape == (1, 1000)
    assert_close(probs, truth.predict(images), 1e-4)


def test_batch_of_three_equals_three_singles(cpu):
    spec = nets.load_spec(CFGS[[p.stem for p in CFGS].index("resnext50")])
    net = Network(spec, random_weights(spec.layers, seed=2), cpu)
    images = np.random.default_rng(3).random((3, *spec.input_shape), dtype=np.float32)
    together = net.predict(images)
    for i in range(3):
        assert np.array_equal(together[i], net.predict(images[i : i + 1])[0])


def test_one_thread_and_all_threads_agree_bit_for_bit():
    # Work is split over outputs, never over a sum: the thread count cannot change a result.
    spec = nets.load_spec(CFGS[[p.stem for p in CFGS].index("resnext50")])
    weights = random_weights(spec.layers, seed=4)
    image = np.random.default_rng(5).random((1, *spec.input_shape), dtype=np.float32)
    one = Network(spec, weights, get_backend("cpu", threads=1)).predict(image)
    assert np.array_equal(one, Network(spec, weights, get_backend("cpu")).predict(image))


def test_linked_convolutions_give_what_unlinked_ones_do(cpu, ref64):
    """In ResNeXt the CPU backend links each 1x1 conv to the grouped conv after it (the 1x1
    writes its output padded and in lane order), and each grouped conv to the 1x1 after it
    (written in lane order, read by permuted weights); stopping at a linked conv still gives
    its plain output, and the network's output is the one the reference computes."""
    spec = nets.load_spec(CFGS[[p.stem for p in CFGS].index("resnext50")])
    weights = random_weights(spec.layers, seed=6)
    net = Network(spec, weights, cpu)
    grouped = [layer.index for layer in spec.layers if getattr(layer, "groups", 1) > 1]
    assert sorted(net.linked) == sorted([i - 1 for i in grouped] + grouped)
    truth = Network(spec, weights, ref64)
    image = np.random.default_rng(7).random((1, *spec.input_shape), dtype=np.float32)
    for until in (grouped[0] - 1, grouped[0], grouped[0] + 1, grouped[-1] - 1, grouped[-1]):
        assert_close(net.forward(image, until=until), truth.forward(image, until=until), 1e-4)
