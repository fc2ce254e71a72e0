"""All 20 shipped cfgs (Darknet's 18 ImageNet classifiers, its 2 CIFAR ones): build, table, random weights through our writer and reader, forward on
`cpu`, and agreement with a float64 `ref` forward within 1e-4 of the largest value."""

from pathlib import Path

import numpy as np
import pytest

import nets
from kern import get_backend
from nets.network import Network
from nets.weights import random_weights, read_weights, write_weights
from tests.conftest import assert_close

pytestmark = pytest.mark.slow  # left out of the fast subset: pytest -m 'not slow'

CFGS = sorted(Path(__file__).resolve().parent.parent.joinpath("cfg").glob("*.cfg"))


def test_all_eighteen_cfgs_are_shipped():
    assert len(CFGS) == 20


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
    assert probs.shape == (1, 10 if "cifar" in cfg.stem else 1000)
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


def conv_section(filters: int, size: int, stride: int = 1, groups: int = 1) -> str:
    return (
        f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\n"
        f"pad=1\ngroups={groups}\nactivation=leaky\n"
    )


PADDED_LINKS = (  # layer: what links it
    "[net]\nwidth=23\nheight=19\nchannels=3\n"
    + conv_section(8, 3)  # 0: reads the input (not a conv's output)
    + conv_section(12, 1)  # 1: no padding to write for
    + conv_section(16, 3, stride=2)  # 2: 1 writes its border
    + conv_section(8, 1)  # 3: 2 is also read by the shortcut: not linked
    + conv_section(16, 3)  # 4: 3 writes its border; 4 runs fused with 5
    + "[shortcut]\nfrom=2\nactivation=linear\n"  # 5
    + conv_section(10, 5)  # 6: after a shortcut: unlinked, padding 2
    + conv_section(10, 3, groups=2)  # 7: 6 writes a border of 1 for merged groups
    + conv_section(6, 3, stride=2)  # 8: 7 too; 8 is linked at both ends
    + "[avgpool]\n"
)


def test_a_convolution_writes_the_border_the_next_one_pads_with(tmp_path, cpu, ref64):
    """Where nothing else reads a convolution's output and the next convolution pads its
    input, the first writes its output inside that zero border and the next reads it as it
    is (no padded copy): at batch 2, odd sizes, stride 2, groups, fused into a shortcut, and
    stopping at every layer gives what the float64 reference gives."""
    path = tmp_path / "padded.cfg"
    path.write_text(PADDED_LINKS)
    spec = nets.load_spec(path)
    weights = random_weights(spec.layers, seed=8)
    net, truth = Network(spec, weights, cpu), Network(spec, weights, ref64)
    assert sorted(net.linked) == [1, 3, 6, 7]
    assert [net.prepared[i].input_padded for i in (2, 4, 7, 8)] == [True] * 4
    assert not any(net.prepared[i].input_padded for i in (0, 1, 3, 6))
    images = np.random.default_rng(9).random((2, *spec.input_shape), dtype=np.float32)
    for until in range(len(spec.layers)):
        assert_close(net.forward(images, until=until), truth.forward(images, until=until), 1e-4)


WINOGRAD_LINKS = (  # 3x3 stride 1 on 64+ channels: the CPU's Winograd
    conv_section(64, 3)  # 0: 3 channels (direct GEMM), writes the border 1 reads
    + conv_section(64, 3)  # 1: Winograd on a padded input, writes 2's border
    + conv_section(80, 3)  # 2: Winograd on a padded input; read by the shortcut: not linked
    + conv_section(64, 1)  # 3: writes 4's border
    + conv_section(80, 3)  # 4: Winograd fused with 5, on a padded input
    + "[shortcut]\nfrom=2\nactivation=leaky\n"  # 5
    + "[avgpool]\n"
)


@pytest.mark.parametrize("height,width", [(10, 12), (9, 13)], ids=["even", "odd"])
def test_winograd_reads_and_writes_linked_borders(tmp_path, cpu, ref64, height, width):
    """Winograd layers read a padded input as it is (even sizes: its tiles fit the border; odd
    sizes: copied into one row and column more), write the next layer's border, and fuse a
    shortcut: at batch 2 every layer's output is the float64 reference's."""
    path = tmp_path / "winograd.cfg"
    path.write_text(f"[net]\nwidth={width}\nheight={height}\nchannels=3\n" + WINOGRAD_LINKS)
    spec = nets.load_spec(path)
    weights = random_weights(spec.layers, seed=10)
    net, truth = Network(spec, weights, cpu), Network(spec, weights, ref64)
    assert [net.prepared[i].plain_winograd is not None for i in range(5)] == [False, True, True, False, True]
    assert [net.prepared[i].input_padded for i in (1, 2, 4)] == [True] * 3
    assert [net.prepared[i].out_padding for i in (0, 1, 2, 3)] == [1, 1, 0, 1]
    images = np.random.default_rng(11).random((2, *spec.input_shape), dtype=np.float32)
    for until in range(len(spec.layers)):
        assert_close(net.forward(images, until=until), truth.forward(images, until=until), 1e-4)
