"""kern/ref against PyTorch (an independent implementation), where torch is installed."""

import numpy as np
import pytest

from kern.params import BatchNorm
from tests.conftest import assert_close
from tests.test_ops import CONV_SHAPES, random_conv

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_ref_conv_bn_leaky_matches_torch(rng, ref64, shape):
    x, weights, bias, bn, o = random_conv(rng, shape, "leaky")
    got = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **o))
    t = lambda a: torch.from_numpy(a.astype(np.float64))  # noqa: E731
    y = F.conv2d(t(x), t(weights), stride=o["stride"], padding=o["padding"], groups=o["groups"])
    std = torch.sqrt(t(bn.variance)) + 1e-6  # Darknet's epsilon placement
    y = t(bn.scales)[:, None, None] * (y - t(bn.mean)[:, None, None]) / std[:, None, None]
    y = F.leaky_relu(y + t(bias)[:, None, None], 0.1)
    assert_close(got, y.numpy(), 1e-12)


def test_ref_maxpool_matches_torch_when_padding_is_symmetric(rng, ref64):
    # Darknet's size=3 stride=2 padding=2 pads one cell each side: torch's padding=1.
    x = rng.standard_normal((2, 3, 13, 13))
    got = ref64.maxpool(x, size=3, stride=2, padding=2)
    assert_close(got, F.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy(), 0)


def test_ref_softmax_and_avgpool_match_torch(rng, ref64):
    x = rng.standard_normal((3, 40, 5, 5))
    assert_close(ref64.avgpool(x), F.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy(), 1e-12)
    flat = x.reshape(3, 4, -1)
    expected = F.softmax(torch.from_numpy(flat) / 2.0, dim=2).numpy().reshape(x.shape)
    assert_close(ref64.softmax(x, groups=4, temperature=2.0), expected, 1e-12)


def test_ref_batchnorm_folding_matches_explicit(rng, ref64, cpu):
    x, weights, bias, _, o = random_conv(rng, (1, 4, 6, 6, 3, 3, 1, 1, 1), "linear")
    bn = BatchNorm(*(rng.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(3)))
    explicit = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **o))
    assert_close(cpu.to_numpy(cpu.conv2d(cpu.asarray(x), cpu.prepare_conv(weights, bias, bn, **o))), explicit)
