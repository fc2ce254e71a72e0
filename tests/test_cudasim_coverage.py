"""Every way the shipped cfgs launch a convolution or a max pool runs on cudasim.

A review found that the CUDA tests never launched some shapes the shipped networks do (the
GEMMs with stride 2 or with padding other than size/2, max pool into a route's channel slice,
a grouped fused residual in the 128 GEMM). Here every layer of every cfg in cfg/ at batch 1 and
8 is mapped to its launch class: for a convolution the kernel backend.py chooses, its size,
stride, padding against size/2, grouped or not, with a fused shortcut or not, reading and
writing a channel slice (planned memory, nets/memory.py) or not; for a max pool its window,
stride, padding and whether it writes a slice. Then one small layer of each class that occurs
(the same kernel chosen: filters per group and pixels picked for it) runs on cudasim against the
float64 reference. A new cfg or a new kernel choice brings its classes in by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import nets
from nets.layers import Convolutional, MaxPool
from nets.memory import INPUT, plan_memory
from nets.network import fusable_shortcuts
from tests.conftest import assert_close

REPO = Path(__file__).resolve().parent.parent
CFGS = sorted((REPO / "cfg").glob("*.cfg"))
BATCHES = (1, 8)


def backend_module():
    """cudasim's copy of kern/cuda/backend.py: its kernel choice, without cupy."""
    pytest.importorskip("kern.cudasim", reason="no C++ compiler for cudasim")
    return sys.modules["kern.cudasim._cuda_backend"]


def _is_slice(plan, producer: int) -> bool:
    place = plan.places[producer]
    return place.channels != place.root_shape[0]


def launch_classes() -> tuple[set[tuple], set[tuple]]:
    """(convolution classes, max pool classes) of every layer of the shipped cfgs."""
    cuda = backend_module()
    convs, pools = set(), set()
    for cfg in CFGS:
        spec = nets.load_spec(cfg)
        fused = fusable_shortcuts(spec.layers, spec.kept)
        plan = plan_memory(spec.layers, spec.input_shape, fused)
        for layer in spec.layers:
            if not isinstance(layer, (Convolutional, MaxPool)):
                continue
            i = layer.index
            source = plan.value_of[i - 1] if i else INPUT
            writes = fused[i].index if i in fused else i
            slices = (_is_slice(plan, source), _is_slice(plan, writes))
            if isinstance(layer, MaxPool):
                pools.add((layer.size, layer.stride, layer.padding, slices[1]))
            if not isinstance(layer, Convolutional):
                continue
            group_filters = layer.filters // layer.groups
            _, height, width = layer.out_shape
            for batch in BATCHES:
                kernel = cuda.choose_conv_kernel(batch * height * width, group_filters)
                if layer.in_shape[0] // layer.groups >= cuda.TAP_CHANNELS and kernel not in (
                        "conv2d_direct", "conv2d_implicit_gemm"):
                    kernel = "conv2d_implicit_gemm"
                convs.add((kernel, layer.size, layer.stride, layer.padding == layer.size // 2,
                           layer.groups > 1, i in fused, *slices))
    return convs, pools


def small_conv_shape(kernel: str, size: int, stride: int, padding: int) -> tuple[int, int, int]:
    """(batch, input size, filters per group) of a small layer that gets `kernel`."""
    cuda = backend_module()
    batch, out = (1, 5) if kernel == "conv2d_implicit_gemm_splitk" else (2, 12)
    filters = {"conv2d_direct": 5, "conv2d_implicit_gemm": 20}.get(kernel, cuda.BIG_MIN_FILTERS + 8)
    return batch, (out - 1) * stride + size - 2 * padding, filters


CONV_CLASSES, POOL_CLASSES = (sorted(c) for c in launch_classes())


def test_the_cfgs_launch_the_classes_the_review_found_missing():
    """The enumeration sees what the review listed: stride-2 GEMMs, padding not size/2
    (alexnet's first layer), a max pool into a route's slice."""
    kernels = {"conv2d_implicit_gemm", "conv2d_implicit_gemm_128", "conv2d_implicit_gemm_splitk"}
    assert any(c[0] in kernels and c[2] == 2 for c in CONV_CLASSES)
    assert any(not c[3] for c in CONV_CLASSES)
    assert any(p[3] for p in POOL_CLASSES)
    assert len({c[0] for c in CONV_CLASSES}) == 4


@pytest.mark.parametrize("kernel, size, stride, half_padding, grouped, residual, slice_in, slice_out", CONV_CLASSES,
                         ids=["-".join(map(str, c)) for c in CONV_CLASSES])
def test_convolution_class_runs_on_cudasim(cudasim, ref64, rng, kernel, size, stride, half_padding, grouped,
                                           residual, slice_in, slice_out):
    padding = size // 2 if half_padding else max(size // 2 - 1, 0) if size > 1 else 1
    batch, height, group_filters = small_conv_shape(kernel, size, stride, padding)
    groups = 2 if grouped else 1
    channels, filters = 3 * groups, group_filters * groups
    weights = rng.standard_normal((filters, 3, size, size)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32)
    options = dict(stride=stride, padding=padding, groups=groups, activation="leaky")
    x_whole = rng.standard_normal((batch, channels + 4, height, height)).astype(np.float32)
    x = np.ascontiguousarray(x_whole[:, 2:2 + channels])
    device_x = cudasim.asarray(x_whole)[:, 2:2 + channels] if slice_in else cudasim.asarray(x)
    ref_conv = ref64.prepare_conv(weights, bias, None, **options)
    expected = ref64.conv2d(ref64.asarray(x), ref_conv)
    _, _, oh, ow = expected.shape
    assert backend_module().choose_conv_kernel(batch * oh * ow, group_filters) == kernel
    whole_shape = (batch, filters + 7, oh, ow)
    arena = cudasim.arena(int(np.prod(whole_shape)))
    out = cudasim.arena_view(arena, 0, whole_shape, 3, filters) if slice_out else None
    prepared = cudasim.prepare_conv(weights, bias, None, **options)
    if residual:  # the shortcut after it, fused: leaky(conv's output + residual)
        res = rng.standard_normal(expected.shape).astype(np.float32)
        got = cudasim.conv2d_residual(device_x, prepared, cudasim.asarray(res), activation="leaky", out=out)
        expected = ref64.conv2d_residual(ref64.asarray(x), ref_conv, ref64.asarray(res), activation="leaky")
    else:
        got = cudasim.conv2d(device_x, prepared, out=out)
    assert_close(cudasim.to_numpy(got), expected)
    if slice_out:  # the channels around the slice stay unwritten (NaN)
        whole = cudasim.to_numpy(cudasim.arena_view(arena, 0, whole_shape, 0, filters + 7))
        assert np.isnan(whole[:, :3]).all() and np.isnan(whole[:, 3 + filters:]).all()


@pytest.mark.parametrize("size, stride, padding, slice_out", POOL_CLASSES,
                         ids=["-".join(map(str, c)) for c in POOL_CLASSES])
def test_max_pool_class_runs_on_cudasim(cudasim, ref64, rng, size, stride, padding, slice_out):
    x = rng.standard_normal((2, 5, 11, 10)).astype(np.float32)
    options = dict(size=size, stride=stride, padding=padding)
    expected = ref64.maxpool(ref64.asarray(x), **options)
    _, channels, oh, ow = expected.shape
    arena = cudasim.arena(2 * (channels + 4) * oh * ow)
    whole_shape = (2, channels + 4, oh, ow)
    out = cudasim.arena_view(arena, 0, whole_shape, 2, channels) if slice_out else None
    got = cudasim.maxpool(cudasim.asarray(x), out=out, **options)
    assert_close(cudasim.to_numpy(got), expected)
    if slice_out:
        whole = cudasim.to_numpy(cudasim.arena_view(arena, 0, whole_shape, 0, channels + 4))
        assert np.isnan(whole[:, :2]).all() and np.isnan(whole[:, 2 + channels:]).all()
