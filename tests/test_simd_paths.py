"""The CPU's vector-width paths (kern.cpu.simd.choose_simd, KERN_SIMD): the 16-lane GEMM
(AVX-512) gives the 8-lane GEMM's result bit for bit, on every awkward shape, with a fused
residual, at any thread count, and writes every output and nothing else. It runs on any x86
CPU: where there is no AVX-512, LLVM splits its vectors in two (slower, the same values).
tests/test_ops.py checks that conv_gemm16 writes every output and nothing else."""

import numpy as np
import pytest

from kern import KernError, get_backend
from kern.cpu.simd import SIMD_PATHS, choose_simd, host_simd
from kern.params import ACTIVATIONS
from tests.conftest import assert_close
from tests.test_ops import CONV_SHAPES, random_conv, tolerance


@pytest.fixture(scope="module")
def paths():
    return {name: get_backend("cpu", simd=name) for name in ("avx2", "avx512")}


@pytest.mark.parametrize("activation", ["leaky", "logistic"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_sixteen_lanes_equal_eight_bit_for_bit(rng, ref64, paths, shape, activation):
    x, weights, bias, bn, options = random_conv(rng, shape, activation)
    out = {}
    for name, backend in paths.items():
        conv = backend.prepare_conv(weights, bias, bn, **options)
        out[name] = backend.to_numpy(backend.conv2d(backend.asarray(x), conv))
    assert np.array_equal(out["avx512"], out["avx2"])
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **options))
    assert_close(out["avx512"], expected, tolerance(shape))


@pytest.mark.parametrize("shape", [CONV_SHAPES[i] for i in (0, 2, 12, 20, 22)], ids=str)
def test_sixteen_lanes_with_fused_residual_and_one_thread(rng, paths, shape):
    x, weights, bias, bn, options = random_conv(rng, shape, "linear")
    one = get_backend("cpu", threads=1, simd="avx512")
    results = []
    for backend in (paths["avx2"], paths["avx512"], one):
        conv = backend.prepare_conv(weights, bias, bn, **options)
        plain = backend.conv2d(backend.asarray(x), conv)
        residual = np.random.default_rng(1).standard_normal(plain.shape).astype(np.float32)
        results.append(backend.to_numpy(backend.conv2d_residual(backend.asarray(x), conv, residual, activation="leaky")))
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[1], results[2])


def test_the_path_comes_from_the_host_or_kern_simd(monkeypatch):
    assert host_simd() in SIMD_PATHS
    monkeypatch.delenv("KERN_SIMD", raising=False)
    assert choose_simd() == host_simd()
    monkeypatch.setenv("KERN_SIMD", "avx512")
    assert choose_simd() == "avx512" and get_backend("cpu").lanes == 16
    assert choose_simd("generic") == "generic" and get_backend("cpu", simd="avx2").lanes == 8
    monkeypatch.setenv("KERN_SIMD", "sse9")
    with pytest.raises(KernError, match="KERN_SIMD=sse9: expected one of avx512, avx2, generic"):
        get_backend("cpu")


def test_weights_over_2_mb_take_longer_jobs_on_both_widths_and_agree(rng, ref64, paths):
    """256 x 256 x 3 x 3 weights (2.4 MB, over gemm.BIG_WEIGHTS_BYTES) on 2 x 9 x 7 images: 126
    pixels, more than a whole column, so both GEMMs split them into 96-pixel jobs."""
    x, weights, bias, bn, options = random_conv(rng, (2, 256, 9, 7, 256, 3, 1, 1, 1), "leaky")
    assert weights.nbytes > 2 << 20
    out = {}
    for name, backend in paths.items():
        conv = backend.prepare_conv(weights, bias, bn, **options)
        out[name] = backend.to_numpy(backend.conv2d(backend.asarray(x), conv))
    assert np.array_equal(out["avx512"], out["avx2"])
    expected = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **options))
    assert_close(out["avx2"], expected)


def test_weight_gradient_is_the_same_on_both_widths():
    """wgrad's 8- and 16-lane kernels sum every element in the same order: the same bits."""
    from kern.cpu import conv, wgrad

    rng = np.random.default_rng(11)
    for shape, filters, groups in (((2, 9, 7, 24), 40, 1), ((1, 6, 5, 16), 20, 2), ((3, 4, 4, 3), 10, 1)):
        x = conv.pad(rng.standard_normal(shape).astype(np.float32), 1)
        dz = rng.standard_normal((*shape[:3], filters)).astype(np.float32)
        eight = wgrad.conv2d_backward_weights(x, dz, 3, 1, groups, lanes=8)
        sixteen = wgrad.conv2d_backward_weights(x, dz, 3, 1, groups, lanes=16)
        np.testing.assert_array_equal(eight, sixteen)


# Filters 70 (GEMM: four whole panels, an odd partial last one) and 72 (Winograd: a partial last
# panel of 8), odd maps: every pair of activations takes the kernels' registers (linear, leaky,
# relu, whole panels) or activation.finish_outputs (logistic, tanh, partial panels).
FINISH_SHAPES = [(2, 24, 7, 9, 70, 3, 1, 1, 1), (2, 64, 9, 7, 72, 3, 1, 1, 1)]


@pytest.mark.parametrize("residual_activation", ACTIVATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", FINISH_SHAPES, ids=("gemm", "winograd"))
def test_every_activation_with_every_shortcut_activation(rng, ref64, paths, shape, activation, residual_activation):
    x, weights, bias, bn, options = random_conv(rng, shape, activation)
    sums = ref64.conv2d(ref64.asarray(x), ref64.prepare_conv(weights, bias, bn, **dict(options, activation="linear")))
    residual = rng.standard_normal(sums.shape).astype(np.float32)
    convolved = ref64.activate(sums, activation)
    expected = ref64.activate(convolved + residual, residual_activation)
    out = {}
    for name, backend in paths.items():
        conv = backend.prepare_conv(weights, bias, bn, **options)
        assert (conv.plain_winograd is not None) == (shape[4] == 72)
        fused = backend.conv2d_residual(backend.asarray(x), conv, backend.asarray(residual), activation=residual_activation)
        out[name] = backend.to_numpy(fused)
    assert np.array_equal(out["avx512"], out["avx2"])
    # Every activation has slope <= 1: an error in the sums passes through at most as it is.
    bound = tolerance(shape) * (np.abs(sums).max() + np.abs(residual).max())
    assert np.all(np.isfinite(out["avx512"])) and np.abs(out["avx512"] - expected).max() <= bound
