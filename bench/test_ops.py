"""Per-op microbenchmarks on the real layer shapes of the cfgs (pytest-benchmark).

    pytest bench --benchmark-only [-k resnext50] [--benchmark-columns=median,ops]

Each convolution and max-pool shape of darknet19, resnet50 and resnext50 (batch 1, 2 threads
by default: KERN_BENCH_THREADS) runs through kern's CPU backend and, when installed, through
PyTorch (batchnorm folded, channels-last) on the same shape, kern's grouped convolutions as
the network runs them (linked to a 1x1 before and after: input and output in lane order);
extra_info records GFLOP/s (convolutions) or GB/s (pooling) from the median, so ratios come
from one run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import nets
from kern.cpu import CpuBackend
from nets.layers import Convolutional, MaxPool

REPO = Path(__file__).resolve().parent.parent
NETWORKS = ("darknet19", "resnet50", "resnext50")
THREADS = int(os.environ.get("KERN_BENCH_THREADS", "2"))


def layer_shapes(kind):
    """Unique layers of `kind` over NETWORKS, as (network, layer) pairs, first occurrence."""
    seen, found = set(), []
    for name in NETWORKS:
        for layer in nets.load_spec(REPO / "cfg" / f"{name}.cfg").layers:
            if isinstance(layer, kind):
                key = (layer.in_shape, layer.describe())
                if key not in seen:
                    seen.add(key)
                    found.append((name, layer))
    return found


def backend(peer):
    if peer == "kern":
        return CpuBackend(threads=THREADS)
    torch_backend = pytest.importorskip("bench.torch_backend")
    return torch_backend.TorchBackend(THREADS)


def median_seconds(benchmark) -> float:
    return benchmark.stats.stats.median


@pytest.mark.parametrize("peer", ["kern", "torch"])
@pytest.mark.parametrize(
    "network,layer", layer_shapes(Convolutional), ids=lambda v: v if isinstance(v, str) else v.describe()
)
def test_conv(benchmark, peer, network, layer):
    rng = np.random.default_rng(0)
    on = backend(peer)
    c, _, _ = layer.in_shape
    weights = rng.standard_normal((layer.filters, c // layer.groups, layer.size, layer.size), dtype=np.float32)
    conv = on.prepare_conv(
        weights, np.zeros(layer.filters, np.float32), None, stride=layer.stride,
        padding=layer.padding, groups=layer.groups, activation=layer.activation,
    )
    x = on.asarray(rng.random((1, *layer.in_shape), dtype=np.float32))
    conv, x = as_linked(on, conv, x, rng)
    benchmark(on.conv2d, x, conv)
    benchmark.extra_info["GFLOP/s"] = layer.flops / median_seconds(benchmark) / 1e9
    benchmark.extra_info["network"] = network


def as_linked(on, conv, x, rng):
    """A convolution as the network runs it where the backend links it to the 1x1 before and
    after it (CpuBackend.link_convs: ResNeXt's grouped layers), with x in the layout that the
    1x1 before writes for it; as it is elsewhere."""
    link = getattr(on, "link_convs", None)
    before = link(one_by_one(on, x.shape[-1], rng), conv) if link else None
    if before is None or not before[1].input_ready:  # not grouped (a 3x3 after a pool runs unlinked)
        return conv, x
    producer, conv = before
    after = link(conv, one_by_one(on, conv.filters, rng))
    return (conv if after is None else after[0]), on.conv2d(x, producer)


def one_by_one(on, channels, rng):
    """A linear 1x1 convolution, channels to channels, random weights."""
    weights = rng.standard_normal((channels, channels, 1, 1), dtype=np.float32)
    return on.prepare_conv(
        weights, np.zeros(channels, np.float32), None, stride=1, padding=0, groups=1, activation="linear"
    )


@pytest.mark.parametrize("peer", ["kern", "torch"])
@pytest.mark.parametrize(
    "network,layer", layer_shapes(MaxPool), ids=lambda v: v if isinstance(v, str) else v.describe()
)
def test_maxpool(benchmark, peer, network, layer):
    on = backend(peer)
    x = on.asarray(np.random.default_rng(0).random((1, *layer.in_shape), dtype=np.float32))
    benchmark(on.maxpool, x, size=layer.size, stride=layer.stride, padding=layer.padding)
    moved = 4 * (np.prod(layer.in_shape) + np.prod(layer.out_shape))
    benchmark.extra_info["GB/s"] = moved / median_seconds(benchmark) / 1e9
