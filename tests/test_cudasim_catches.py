"""cudasim finds kernel bugs: each planted bug below (a copy of a real kern/cuda kernel with one
mistake, or a mistake in how the backend launches it) must be caught, as an error that names
what went wrong, or as an output that differs from the reference or is NaN (unwritten memory
is NaN on cudasim). The same ops pass unplanted (test_ops.py, the `fast` fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from kern.cuda.sources import FOLDER, compile_options
from kern.errors import KernError
from tests.conftest import assert_close

cudasim = pytest.importorskip("kern.cudasim", reason="no C++ compiler for cudasim")
from kern.cudasim.device import CudasimError, RawModule  # noqa: E402

pytestmark = pytest.mark.slow  # left out of the fast subset: pytest -m 'not slow'


def planted(backend, source: str, old: str, new: str, count: int = 1, cp_async: bool = False):
    """The backend with `source` compiled from a copy where `old` became `new` (the count-th
    occurrence; 0: every one). reduce.cuh's text stands in place of its #include, so that a
    bug planted in the block reductions reaches that file's kernels only."""
    header = (FOLDER / "reduce.cuh").read_text().replace("#pragma once\n", "")
    code = (FOLDER / source).read_text().replace('#include "reduce.cuh"\n', header)
    assert old in code, old
    if count == 0:
        changed = code.replace(old, new)
    else:
        at = -1
        for _ in range(count):
            at = code.index(old, at + 1)
        changed = code[:at] + new + code[at + len(old):]
    options = compile_options(cp_async)
    backend._modules[source] = RawModule(code=changed, options=options, name=f"{source} (planted)")
    return backend


def conv(backend, ref, rng, filters=40, shape=(2, 16, 13, 11), stride=1, padding=1):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((filters, shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    options = dict(stride=stride, padding=padding, groups=1, activation="leaky")
    expected = ref.conv2d(ref.asarray(x), ref.prepare_conv(w, b, None, **options))
    return backend.to_numpy(backend.conv2d(backend.asarray(x), backend.prepare_conv(w, b, None, **options))), expected


def big_conv(backend, ref, rng):  # >= 64 filters and >= 128 pixels: conv2d_implicit_gemm_128
    return conv(backend, ref, rng, filters=72, shape=(1, 25, 13, 12))  # 225 taps: a partial last step


def splitk_conv(backend, ref, rng):  # < 128 pixels: conv2d_implicit_gemm_splitk
    return conv(backend, ref, rng, filters=45, shape=(1, 30, 7, 7))  # 270 taps: warps run 4 or 5 steps


def conv_into_slices(backend, ref, rng, filters=40, shape=(2, 16, 13, 11)):
    """x and the output both channel slices of bigger buffers (images not contiguous), as in a
    planned route; the channels around the output's slice must stay unwritten (NaN): they come
    back as 0 where they are, inf where a kernel wrote them."""
    x_whole = rng.standard_normal((shape[0], shape[1] + 5, *shape[2:])).astype(np.float32)
    w = rng.standard_normal((filters, shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32)
    options = dict(stride=1, padding=1, groups=1, activation="leaky")
    expected = ref.conv2d(ref.asarray(x_whole[:, 2:2 + shape[1]]), ref.prepare_conv(w, b, None, **options))
    arena = backend.arena(shape[0] * (filters + 7) * shape[2] * shape[3])
    out = backend.arena_view(arena, 0, (shape[0], filters + 7, *shape[2:]), 3, filters)
    x = backend.asarray(x_whole)[:, 2:2 + shape[1]]
    backend.conv2d(x, backend.prepare_conv(w, b, None, **options), out=out)
    whole = backend.to_numpy(backend.arena_view(arena, 0, (shape[0], filters + 7, *shape[2:]), 0, filters + 7))
    outside = np.ones(filters + 7, bool)
    outside[3:3 + filters] = False
    # Channels outside the slice: 0 where still unwritten (as expected), inf where written.
    whole[:, outside] = np.where(np.isnan(whole[:, outside]), 0.0, np.inf)
    padded = np.zeros(whole.shape)
    padded[:, 3:3 + filters] = expected
    return whole, padded


def maxpool(backend, ref, rng):
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    options = dict(size=3, stride=2, padding=2)
    return backend.to_numpy(backend.maxpool(backend.asarray(x), **options)), ref.maxpool(ref.asarray(x), **options)


def avgpool(backend, ref, rng):
    x = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)  # 63 pixels: most of 256 threads idle
    return backend.to_numpy(backend.avgpool(backend.asarray(x))), ref.avgpool(ref.asarray(x))


def softmax(backend, ref, rng):
    x = (3 * rng.standard_normal((2, 100, 1, 1))).astype(np.float32)
    options = dict(groups=1, temperature=1.0)
    return backend.to_numpy(backend.softmax(backend.asarray(x), **options)), ref.softmax(ref.asarray(x), **options)


def shortcut(backend, ref, rng):
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    source = rng.standard_normal((2, 6, 10, 10)).astype(np.float32)
    options = dict(alpha=0.5, beta=1.5, activation="leaky")
    expected = ref.shortcut(ref.asarray(x), ref.asarray(source), **options)
    return backend.to_numpy(backend.shortcut(backend.asarray(x), backend.asarray(source), **options)), expected


GEMM_SYNC = "__syncthreads();"
BUGS = {
    # name: (source, old, new, occurrence, op, what the report must say if it is an error)
    "gemm: first __syncthreads removed": ("conv.cu", GEMM_SYNC, "", 1, conv, "race"),
    "gemm: second __syncthreads removed": ("conv.cu", GEMM_SYNC, "", 2, conv, "race"),
    "gemm: shared tile one element short": (
        "conv.cu", "a_tile[TILE_K][TILE_M];", "a_tile[TILE_K][TILE_M - 1];", 1, conv, "out-of-bounds index",
    ),
    "gemm: tile-load loop <=": (
        "conv.cu", "i < TILE_M * TILE_K;", "i <= TILE_M * TILE_K;", 1, conv, "out-of-bounds index",
    ),
    "gemm: pixel guard of the store removed": (
        "conv.cu", "if (p >= pixels) continue;", "", 1, conv, "past the end of argument 3 (y)",
    ),
    "gemm 128: the loop's __syncthreads removed": ("conv.cu", GEMM_SYNC, "", 4, big_conv, "race"),
    "gemm 128: next step stored into the buffer being read": (
        "conv.cu", "a_tile[buffer ^ 1][ak + i][am] = a_next[i];", "a_tile[buffer][ak + i][am] = a_next[i];", 1,
        big_conv, "race",
    ),
    "gemm 128: gather table read one tap too far": (
        "conv.cu", "if (ok && t < taps) {", "if (ok && t <= taps) {", 1, big_conv, "past the end of argument 22 (tap_table)",
    ),
    "split-K: a warp's second __syncwarp removed": ("conv.cu", "__syncwarp();  // the warp's", "// the warp's", 1, splitk_conv, "race"),
    "split-K: the reduction's __syncthreads removed": ("conv.cu", GEMM_SYNC, "", 5, splitk_conv, "race"),
    "split-K: one warp's partial sums left out": (
        "conv.cu", "for (int s = 0; s < WARPS; ++s)", "for (int s = 1; s < WARPS; ++s)", 1, splitk_conv, "",
    ),
    "gemm: stores as if the output were a whole array (y_image ignored)": (
        "conv.cu", "y[b * y_image + (long long)(g * fg + fo) * plane + q] =", "y[at] =", 1, conv_into_slices, "",
    ),
    "gemm 128: gathers as if x were a whole array (x_image ignored)": (
        "conv.cu", "x + image_index * x_image", "x + image_index * (long long)c * h * wd", 1,
        lambda b, r, g: conv_into_slices(b, r, g, filters=72, shape=(2, 25, 13, 12)), "",
    ),
    "direct: bounds check > instead of >=": (
        "conv.cu", "if (idx >= (long long)n * f * oh * ow) return;", "if (idx > (long long)n * f * oh * ow) return;",
        1, lambda b, r, g: conv(b, r, g, filters=5), "past the end of argument",
    ),
    "direct: column check > instead of >=": (
        "conv.cu", "ix >= wd", "ix > wd", 1, lambda b, r, g: conv(b, r, g, filters=5), "past the end",
    ),
    "softmax: early return before a barrier": (
        "elementwise.cu", "    __shared__ float partial[REDUCE_THREADS];\n",
        "    __shared__ float partial[REDUCE_THREADS];\n    if (threadIdx.x >= width) return;\n",
        1, softmax, "barrier divergence",
    ),
    "softmax: the reductions' barrier removed": (
        "elementwise.cu", "partial[threadIdx.x + half]);\n        __syncthreads();", "partial[threadIdx.x + half]);", 1,
        softmax, "race",
    ),
    "avgpool: shared memory left unwritten for idle threads": (
        "pool.cu", "    partial[threadIdx.x] = value;", "    if (value != 0.f) partial[threadIdx.x] = value;", 1, avgpool,
        "",
    ),
    "avgpool: the reduction's barrier removed": (
        "pool.cu", "partial[threadIdx.x + half]);\n        __syncthreads();", "partial[threadIdx.x + half]);", 1, avgpool,
        "race",
    ),
    "avgpool: a barrier in a divergent branch": (
        "pool.cu", "    partial[threadIdx.x] = value;\n    __syncthreads();",
        "    partial[threadIdx.x] = value;\n    if (threadIdx.x < 128) __syncthreads();",
        1, avgpool, "barrier divergence",
    ),
    "avgpool: a warp's barrier where the block's is needed": (
        "pool.cu", "    partial[threadIdx.x] = value;\n    __syncthreads();",
        "    partial[threadIdx.x] = value;\n    __syncwarp();", 1, avgpool, "",
    ),
    "gemm 128: float4 loads of weights whose taps are not a multiple of 4": (
        "conv.cu", "const bool vector = taps % 4 == 0;", "const bool vector = true;", 1, big_conv, "misaligned",
    ),
    "maxpool: row check dropped": ("pool.cu", "if (yy < 0 || yy >= h) continue;", "if (yy < 0) continue;", 1, maxpool, ""),
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_kernel_bug_is_caught(rng, ref64, bug):
    source, old, new, occurrence, op, report = BUGS[bug]
    backend = planted(cudasim.CudasimBackend(), source, old, new, occurrence)
    try:
        got, expected = op(backend, ref64, rng)
    except (CudasimError, KernError) as error:
        assert report in str(error), str(error)
        return
    with pytest.raises(AssertionError):  # a wrong or NaN (unwritten) output
        assert_close(got, expected)


def test_grid_one_block_short_leaves_nan(rng, ref64, monkeypatch):
    backend = cudasim.CudasimBackend()
    grid = cudasim._cuda._grid
    monkeypatch.setattr(cudasim._cuda, "_grid", lambda count: (grid(count)[0] - 1,))
    got, expected = shortcut(backend, ref64, rng)
    assert np.isnan(got).any() and not np.isnan(got).all()


@pytest.mark.parametrize("value,kind", [(0.5, "a Python float is passed as a double"), (np.float64(0.5), "expected numpy.float32"),
                                         (2, "a Python int is passed as a 64-bit integer")])
def test_mistyped_scalar_argument_is_refused(rng, value, kind):
    backend = cudasim.CudasimBackend()
    x = backend.asarray(rng.standard_normal((1, 2, 3, 3)).astype(np.float32))
    y = backend.asarray(np.zeros((1, 2, 3, 3), np.float32))
    kernel = backend._kernel("elementwise.cu", "shortcut")
    dims = [np.int32(v) for v in (1, 2, 3, 3, 2, 3, 3)]
    alpha = value if isinstance(value, float | np.floating) else np.float32(1)
    act = value if isinstance(value, int) else np.int32(0)
    with pytest.raises(CudasimError, match=kind):
        kernel((1,), (32,), (x, x, y, *dims, alpha, np.float32(1), act))


def test_errors_name_kernel_block_thread_and_line(rng, ref64):
    backend = planted(cudasim.CudasimBackend(), "conv.cu", "a_tile[TILE_K][TILE_M];", "a_tile[TILE_K][TILE_M - 1];")
    with pytest.raises(CudasimError) as caught:
        conv(backend, ref64, rng)
    message = str(caught.value)
    assert message.startswith("conv2d_implicit_gemm (conv.cu (planted))")
    assert "block (" in message and "thread (" in message
    line = next(i for i, text in enumerate((FOLDER / "conv.cu").read_text().splitlines(), 1) if "a_tile[kk][m] =" in text)
    assert f"conv.cu (planted):{line}" in message or f":{line}" in message


def test_launch_limits_are_checked(rng):
    backend = cudasim.CudasimBackend()
    x = backend.asarray(np.zeros(4, np.float32))
    kernel = backend._kernel("elementwise.cu", "activate_all")
    with pytest.raises(CudasimError, match="at most 1024 threads"):
        kernel((1,), (1025,), (x, x, np.int64(4), np.int32(0)))
    with pytest.raises(CudasimError, match="y and z in 1..65535"):
        kernel((1, 65536), (32,), (x, x, np.int64(4), np.int32(0)))


def test_a_block_over_its_launch_bounds_is_refused(rng):
    """conv.cu's GEMMs are compiled with __launch_bounds__(THREADS) (256): a launch of 512
    threads per block (a planted backend bug) fails on a GPU, and on cudasim with the bound."""
    backend = cudasim.CudasimBackend()
    kernel = backend._kernel("conv.cu", "conv2d_implicit_gemm")
    assert kernel.bounds == 256
    x = backend.asarray(rng.standard_normal((1, 16, 8, 8)).astype(np.float32))
    conv = backend.prepare_conv(rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
                                np.zeros(32, np.float32), None, stride=1, padding=1, groups=1, activation="linear")

    class Wider:  # the planted bug: the backend launches the kernel with 512 threads a block
        def __call__(self, grid, block, args, shared_mem=0):
            return kernel(grid, (512,), args, shared_mem)

    backend._kernel = lambda source, name: Wider()
    with pytest.raises(CudasimError, match=r"512 threads > __launch_bounds__ 256"):
        backend.conv2d(x, conv, kernel="conv2d_implicit_gemm")


def test_dynamic_shared_memory_over_48_kib_needs_the_opt_in():
    source = 'extern "C" __global__ void big(float* out) { extern __shared__ float s[]; s[threadIdx.x] = 1.f; out[threadIdx.x] = s[threadIdx.x]; }'
    kernel = RawModule(code=source, name="big.cu").get_function("big")
    out = cudasim.device.asarray(np.full(32, np.nan, np.float32))
    with pytest.raises(CudasimError, match="over 48 KiB needs max_dynamic_shared_size_bytes"):
        kernel((1,), (32,), (out,), shared_mem=64 * 1024)
    kernel.max_dynamic_shared_size_bytes = 64 * 1024  # what CuPy code sets before such a launch
    kernel((1,), (32,), (out,), shared_mem=64 * 1024)
    assert np.array_equal(cudasim.device.asnumpy(out), np.ones(32, np.float32))


@pytest.mark.parametrize("back,says", [(1, None), (4096, r"4096 bytes before argument 0 \(x\)")], ids=["one", "a page"])
def test_reads_before_an_array_are_caught(back, says):
    """A planted off-by-one below zero (x[i - 1] at i = 0) reads 0xff bytes (NaN) between the
    front guard page and the array; a read a page before it faults on the guard page."""
    source = (
        'extern "C" __global__ void shifted(const float* x, float* out, int back) '
        "{ const int i = threadIdx.x; out[i] = x[i - back]; }"
    )
    kernel = RawModule(code=source, name="shifted.cu").get_function("shifted")
    x = cudasim.device.asarray(np.arange(8, dtype=np.float32))
    out = cudasim.device.asarray(np.zeros(8, np.float32))
    if says is None:
        kernel((1,), (8,), (x, out, np.int32(back)))
        assert np.isnan(cudasim.device.asnumpy(out)[0]) and np.array_equal(cudasim.device.asnumpy(out)[1:], np.arange(7))
    else:
        with pytest.raises(CudasimError, match=says):
            kernel((1,), (8,), (x, out, np.int32(back // 4)))


def _small_conv(backend, rng):
    x = backend.asarray(rng.standard_normal((1, 4, 6, 6)).astype(np.float32))
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    return x, backend.prepare_conv(w, b, None, stride=1, padding=1, groups=1, activation="leaky")


def test_capture_refuses_an_allocation_in_the_recorded_pass(rng):
    """An op that allocates its output inside a captured pass: on a GPU the allocation is not
    in the graph (every replay writes the one buffer made while recording, which CuPy's pool
    may have given to another array by then)."""
    backend = cudasim.CudasimBackend()
    x, prepared = _small_conv(backend, rng)
    with pytest.raises(CudasimError, match=r"an allocation of 720 bytes while a stream captures a CUDA graph"):
        backend.capture(lambda: backend.conv2d(x, prepared))  # out=None: allocates


def test_capture_refuses_host_copies_and_launches_on_another_stream(rng, monkeypatch):
    from kern.cudasim import device

    backend = cudasim.CudasimBackend()
    x, prepared = _small_conv(backend, rng)
    out = backend.arena(5 * 36).reshape(1, 5, 6, 6)
    with pytest.raises(CudasimError, match=r"a copy to the host \(asnumpy\) while a stream captures"):
        backend.capture(lambda: backend.to_numpy(backend.conv2d(x, prepared, out=out)))

    def capture_outside_the_stream(run):  # begins capture, but launches on the null stream
        stream = device.Stream()
        stream.begin_capture()
        try:
            run()
        finally:
            stream.end_capture()

    monkeypatch.setattr(backend, "capture", capture_outside_the_stream)
    with pytest.raises(CudasimError, match="conv2d_direct on the null stream while another stream captures"):
        backend.capture(lambda: backend.conv2d(x, prepared, out=out))


def test_a_device_copy_is_recorded_and_replayed():
    from kern.cudasim import device

    source, target = device.asarray(np.arange(6, dtype=np.float32)), device.empty((6,))
    stream = device.Stream()
    with stream:
        stream.begin_capture()
        device.copyto(target, source)
        graph = stream.end_capture()
    assert np.isnan(target.host).all()  # nothing ran while recording
    graph.launch(stream)
    assert np.array_equal(target.host, source.host)
    source.set(np.full(6, 7, np.float32))
    graph.launch(stream)  # a replay copies what the source holds now
    assert (target.host == 7).all()


# The cp.async build of the 128-GEMM (CudaBackend(cp_async=True), sm_80 and later) on cudasim:
# the same output as the register path, bit for bit, and its own planted bugs caught.
CP_ASYNC_BUGS = {
    "the wait before the first step removed": ("    async_wait_all();\n#else", "#else", "race"),
    "the wait in the loop removed": ("        if (more) async_wait_all();", "", "in flight"),
    "padding read instead of zero-filled": ("async_float(&b[bk + 2 * i][bp], src, ok);",
                                            "async_float(&b[bk + 2 * i][bp], src, true);", ""),
}


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_cp_async_build_matches_the_register_build(rng, ref64, stride, padding):
    shape = (1, 25, 13, 12) if stride == 1 else (2, 25, 27, 25)  # >= 128 pixels either way
    plain = conv(cudasim.CudasimBackend(), ref64, np.random.default_rng(5), 72, shape, stride, padding)
    fast = conv(cudasim.CudasimBackend(cp_async=True), ref64, np.random.default_rng(5), 72, shape, stride, padding)
    assert_close(fast[0], fast[1])
    assert np.array_equal(fast[0], plain[0])


@pytest.mark.parametrize("bug", sorted(CP_ASYNC_BUGS))
def test_planted_cp_async_bug_is_caught(rng, ref64, bug):
    old, new, report = CP_ASYNC_BUGS[bug]
    assert (FOLDER / "conv.cu").read_text().count(old) == 1, old
    backend = planted(cudasim.CudasimBackend(cp_async=True), "conv.cu", old, new, cp_async=True)
    try:
        got, expected = big_conv(backend, ref64, rng)
    except CudasimError as error:
        assert report and report in str(error), str(error)
        return
    with pytest.raises(AssertionError):
        assert_close(got, expected)
