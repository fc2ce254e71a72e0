"""The CUDA backend on whole networks (the op-level tests in test_ops.py run on cuda too).
Skips cleanly without cupy or a GPU: CI never has one."""

from pathlib import Path

import numpy as np
import pytest

import nets
from kern import get_backend
from nets.image import letterbox, load_image
from nets.network import Network
from nets.weights import random_weights
from tests.conftest import assert_close

REPO = Path(__file__).resolve().parent.parent
CFGS = sorted((REPO / "cfg").glob("*.cfg"))


def test_both_conv_kernels_match_ref(cuda, rng):
    from kern.cuda.backend import GEMM_MIN_FILTERS

    ref = get_backend("ref", dtype=np.float64)
    for filters in (GEMM_MIN_FILTERS - 1, GEMM_MIN_FILTERS, 40, 70, 130):  # direct, GEMM 64, GEMM 128
        x = rng.standard_normal((3, 6, 17, 15)).astype(np.float32)
        w = rng.standard_normal((filters, 6, 3, 3)).astype(np.float32)
        b = rng.standard_normal(filters).astype(np.float32)
        options = dict(stride=2, padding=1, groups=1, activation="leaky")
        expected = ref.conv2d(ref.asarray(x), ref.prepare_conv(w, b, None, **options))
        got = cuda.to_numpy(cuda.conv2d(cuda.asarray(x), cuda.prepare_conv(w, b, None, **options)))
        assert_close(got, expected)


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_cfg_on_cuda_matches_cpu(cuda, cpu, cfg):
    spec = nets.load_spec(cfg)
    values = random_weights(spec.layers, seed=1)
    images = np.random.default_rng(2).random((2, *spec.input_shape), dtype=np.float32)
    last_conv = max(i for i, layer in enumerate(spec.layers) if layer.kind in ("conv", "connected"))
    on_gpu = Network(spec, values, cuda).forward(images, until=last_conv)
    assert_close(on_gpu, Network(spec, values, cpu).forward(images, until=last_conv), 1e-4)


def test_tiny_real_weights_same_top5_as_cpu(cuda, cpu):
    spec = nets.load_spec(REPO / "cfg" / "tiny.cfg")
    from nets.weights import read_weights

    values = read_weights(REPO / "weights" / "tiny.weights", spec.layers)
    images = np.stack([letterbox(load_image(p), 224, 224) for p in sorted((REPO / "data").glob("*.jpg"))])
    on_gpu = Network(spec, values, cuda).predict(images)
    on_cpu = Network(spec, values, cpu).predict(images)
    for a, b in zip(on_gpu, on_cpu):
        assert [i for i, _ in Network.top_k(a, 5)] == [i for i, _ in Network.top_k(b, 5)]
