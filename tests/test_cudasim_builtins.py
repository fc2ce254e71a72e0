"""cudasim's CUDA built-ins beyond what kern's kernels use today: warp collectives (real
exchanges between lanes, with mask checks), block-wide votes, atomics, dynamic shared memory,
assert, 2-D and 3-D indices. Each kernel here is small CUDA C compiled by cudasim."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

cudasim = pytest.importorskip("kern.cudasim", reason="no C++ compiler for cudasim")
from kern.cudasim import device  # noqa: E402
from kern.cudasim.device import CudasimError  # noqa: E402

SOURCE = r"""
extern "C" __global__ void warp_ops(const float* __restrict__ x, float* __restrict__ out, int* __restrict__ votes)
{
    const int lane = threadIdx.x % 32;
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    float sum = v;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    float total = __shfl_sync(0xffffffffu, sum, 0);                 // lane 0's sum to every lane
    float neighbour = __shfl_xor_sync(0xffffffffu, v, 1);            // pairs swap
    float previous = __shfl_up_sync(0xffffffffu, v, 1);             // lane 0 keeps its own
    unsigned positive = __ballot_sync(0xffffffffu, v > 0.f);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    out[4 * i + 0] = total;
    out[4 * i + 1] = neighbour;
    out[4 * i + 2] = previous;
    out[4 * i + 3] = __int_as_float((int)positive);
    votes[3 * i + 0] = __any_sync(0xffffffffu, v > 2.f);
    votes[3 * i + 1] = __all_sync(0xffffffffu, v > -100.f);
    votes[3 * i + 2] = __syncthreads_count(v > 0.f) + 1000 * __syncthreads_and(v > -100.f) + 10000 * __syncthreads_or(v > 100.f);
    (void)lane;
}

extern "C" __global__ void atomics(const int* __restrict__ x, int* __restrict__ counters, float* __restrict__ total, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&counters[0], 1);
    atomicMax(&counters[1], x[i]);
    atomicMin(&counters[2], x[i]);
    atomicCAS(&counters[3], 0, i + 1);  // the first thread to get here wins
    atomicAdd(total, 1.0f);
}

extern "C" __global__ void dynamic_reverse(const float* __restrict__ x, float* __restrict__ y)
{
    extern __shared__ float staged[];
    const int t = threadIdx.y * blockDim.x + threadIdx.x, count = blockDim.x * blockDim.y;
    staged[t] = x[blockIdx.x * count + t];
    __syncthreads();
    y[blockIdx.x * count + t] = staged[count - 1 - t];
}

extern "C" __global__ void checks(int which, float* __restrict__ y)
{
    if (which == 0) assert(threadIdx.x < 5);
    if (which == 1 && threadIdx.x < 32) y[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.f, 0);  // lanes 16..31 not in the mask
    if (which == 2) { if (threadIdx.x >= 8) return; y[threadIdx.x] = __shfl_sync(0xffffffffu, 1.f, 0); }
}
"""


@pytest.fixture(scope="module")
def module():
    return device.RawModule(code=SOURCE, name="builtins.cu")


def test_warp_collectives_and_block_votes(module, rng):
    x = rng.standard_normal(2 * 64).astype(np.float32)
    x[5] = 3.0  # one lane of the first warp above 2
    out, votes = device.empty((2 * 64 * 4,)), device.empty((2 * 64 * 3,), np.int32)
    module.get_function("warp_ops")((2,), (64,), (device.asarray(x), out, votes))
    got, v = device.asnumpy(out).reshape(-1, 4), device.asnumpy(votes).reshape(-1, 3)
    for warp in range(4):
        lanes = slice(32 * warp, 32 * warp + 32)
        xs = x[lanes]
        np.testing.assert_allclose(got[lanes, 0], xs.sum(), rtol=1e-5)
        assert np.array_equal(got[lanes, 1], xs[np.arange(32) ^ 1])
        assert np.array_equal(got[lanes, 2], np.concatenate([xs[:1], xs[:-1]]))
        ballot = sum(1 << i for i in range(32) if xs[i] > 0)
        assert (got[lanes, 3].view(np.int32).astype(np.int64) & 0xFFFFFFFF == ballot).all()
        assert (v[lanes, 0] == int((xs > 2).any())).all() and (v[lanes, 1] == 1).all()
    for block in range(2):
        rows = slice(64 * block, 64 * block + 64)
        assert (v[rows, 2] == int((x[rows] > 0).sum()) + 1000).all()


def test_atomics(module, rng, monkeypatch):
    x = rng.integers(-50, 50, 100).astype(np.int32)
    kernel = module.get_function("atomics")
    first = (device.asarray(x), device.asarray(np.zeros(4, np.int32)), device.asarray(np.zeros(1, np.float32)))
    with pytest.raises(CudasimError, match="a race: argument 1 .counters. differs at element 3"):
        kernel((4,), (32,), (*first, np.int32(100)))  # which thread's atomicCAS wins depends on the order
    monkeypatch.setenv("KERN_CUDASIM_ORDERS", "1")  # one order: such a kernel's documented escape
    counters = device.asarray(np.array([0, -(2**31), 2**31 - 1, 0], np.int32))
    total = device.asarray(np.zeros(1, np.float32))
    module.get_function("atomics")((4,), (32,), (device.asarray(x), counters, total, np.int32(100)))
    got = device.asnumpy(counters)
    assert got[0] == 100 and got[1] == x.max() and got[2] == x.min() and 1 <= got[3] <= 100
    assert device.asnumpy(total)[0] == 100


def test_dynamic_shared_memory_and_2d_blocks(module, rng):
    x = rng.standard_normal(3 * 40).astype(np.float32)
    y = device.empty((3 * 40,))
    module.get_function("dynamic_reverse")((3,), (8, 5), (device.asarray(x), y), shared_mem=40 * 4)
    assert np.array_equal(device.asnumpy(y).reshape(3, 40), x.reshape(3, 40)[:, ::-1])


@pytest.mark.parametrize("which,message", [
    (0, r"assert\(threadIdx.x < 5\) failed at line \d+"),
    (1, "the calling lane 16 is not in the mask 0x0000ffff"),
    (2, "lane 8 of the mask 0xffffffff has returned"),
])
def test_assert_and_mask_checks(module, which, message):
    with pytest.raises(CudasimError, match=message):
        module.get_function("checks")((1,), (64,), (np.int32(which), device.empty((64,))))


def test_an_edited_header_is_built_again(tmp_path, monkeypatch):
    """The compile cache keys on the files a source includes, not the source alone: after an
    edit of a header (as of kern/cuda/activation.cuh) the kernel gives the new value, not the
    old build's. The CUDA backend's sources carry their headers' hash for CuPy's cache too."""
    monkeypatch.setenv("KERN_CUDASIM_CACHE", str(tmp_path / "cache"))
    header = tmp_path / "slope.cuh"
    code = '#include "slope.cuh"\nextern "C" __global__ void put(float* out) { out[threadIdx.x] = SLOPE; }\n'
    got = []
    for slope in ("0.1f", "0.2f"):
        header.write_text(f"#define SLOPE {slope}\n")
        out = device.asarray(np.full(4, np.nan, np.float32))
        device.RawModule(code=code, options=(f"-I{tmp_path}",)).get_function("put")((1,), (4,), (out,))
        got.append(device.asnumpy(out))
    assert np.array_equal(got[0], np.full(4, 0.1, np.float32)) and np.array_equal(got[1], np.full(4, 0.2, np.float32))
    from kern.cuda import sources

    for name in ("conv.cu", "activation.cuh"):
        shutil.copy(sources.FOLDER / name, tmp_path / name)
    monkeypatch.setattr(sources, "FOLDER", tmp_path)
    before = sources.source_code("conv.cu")
    (tmp_path / "activation.cuh").write_text((tmp_path / "activation.cuh").read_text() + "// edited\n")
    after = sources.source_code("conv.cu")
    assert before.startswith((tmp_path / "conv.cu").read_text()) and before != after
