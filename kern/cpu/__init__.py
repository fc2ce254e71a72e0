"""The Numba CPU backend: hand-written parallel kernels, no BLAS.

Its arrays are channels-last, (N, H, W, C) float32: `asarray` takes NCHW and `to_numpy` gives
NCHW back, as every backend does; in between, each pixel's channels are contiguous, which is
what the GEMM's vector stores and the vectorized pooling want (see gemm.py).
Weights are prepared once: batchnorm folded in, conv weights packed to whole tiles.
Planned memory (kern/backend.py): in a network every op writes its output into its place in
the network's arena (`out=`), so a pass allocates no output; arrays over 32 MB, allocated per
op, made the kernel fault their pages in again on every pass (docs/benchmarks.md, batch 8).
`threads` caps Numba's worker threads for this backend's calls (None: all cores). `simd` picks
the GEMM's vector width (simd.choose_simd: KERN_SIMD, else the host's; "avx512" runs the
16-lane GEMM, the others the 8-lane one; grouped and Winograd kernels are 8-lane on every path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numba
import numpy as np

from kern.cpu.cache import drop_stale_kernels

drop_stale_kernels()  # before any kernel's module loads its cached code (kern/cpu/cache.py)

from kern.cpu import channels, conv, depthwise, elementwise, grouped, pool, winograd, winograd_plain  # noqa: E402
from kern.cpu.connected import connected, pack_connected  # noqa: E402
from kern.cpu.simd import aligned_empty, choose_simd, output_array  # noqa: E402
from kern.errors import KernError  # noqa: E402
from kern.params import activation_code, conv_output_size, fold_batchnorm, maxpool_output_size, pair  # noqa: E402

# Numba tries tbb first when it is installed (PyTorch brings it). Measured here, alternating
# processes, 2 threads: omp ran tiny in 18-27 ms vs 20-31 with tbb, darknet19 in 70-74 vs
# 72-89, and steadier. Prefer omp unless the user chose a layer; this only orders Numba's
# search, before its first parallel launch.
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
# OpenMP's threads spin between parallel regions (300,000 spins by default), then sleep. On a
# machine that other work shares, spinning takes the cores that work needs, and each region
# waits for the slowest thread; but a thread that sleeps at once is slow to wake for the next
# region, and training runs hundreds of short ones per step. Measured on 2 AMD EPYC Zen 4 cores
# (docs/benchmarks.md, "Threads on a shared machine"), interleaved: a cifar_small training step
# at 2 threads, sleeping at once (OMP_WAIT_POLICY=PASSIVE) 68-101 ms, median 97, against 61-78
# (median 66) spinning 30,000 first, 5 of 5 rounds; darknet19 inference 2 threads 73-83 ms
# against 60-76, and with a busy loop on each core 143-161 against 155-165 (both well within
# 1.5x one thread's time under the same load; always spinning: 219). So: a short spin, unless
# the user chose (read by libgomp when Numba first loads it).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")


def _check_window(size: int, stride: int, padding: int) -> None:
    if size < 1 or stride < 1 or padding < 0:
        raise KernError(f"size {size}, stride {stride}, padding {padding}: expected 1, 1 and 0 or more")


@dataclass(frozen=True)
class CpuConv:
    packed: np.ndarray  # conv.pack_weights (panels of 16 filters) or grouped.pack_lane_weights
    bias: np.ndarray
    groups_in_lanes: bool  # run by grouped.conv2d_lane_groups, not by conv.conv2d_gemm
    filters: int
    ksize: int
    stride: int
    padding: int
    act: int
    # Set by link_convs: this conv writes its output for the next one, with its channels in
    # out_order (output channel i is channel out_order[i]), as out_planes zero-padded images
    # (grouped ones: in lane order, one plane, no border).
    out_order: np.ndarray | None = None
    out_planes: int = 1
    out_padding: int = 0
    input_ready: bool = False  # its input comes as conv_lane_groups' `interleaved` (linked)
    input_padded: bool = False  # its input comes with its zero border of `padding` (linked)
    winograd: np.ndarray | None = None  # linked and 3x3 stride 1: winograd.pack_winograd_weights
    # One group, 3x3 stride 1 padding 1, 64+ channels: winograd_plain.pack_weights (fewer multiplies)
    plain_winograd: np.ndarray | None = None
    depthwise: np.ndarray | None = None  # one channel per group: depthwise.pack_weights (never linked)
    # A non-square kernel or padding (Caffe's): (kernel width, padding along the width); ksize and
    # padding are then the height's. The GEMM alone runs it (conv2d_gemm's shape_w), never linked.
    shape_w: tuple[int, int] | None = None


@dataclass(frozen=True)
class CpuConnected:
    packed: np.ndarray
    bias: np.ndarray
    outputs: int
    act: int


@dataclass(frozen=True)
class CpuAffine:
    scale: np.ndarray
    bias: np.ndarray
    slope: np.ndarray  # PReLU's below 0, per channel (ones: none)
    act: int


class CpuBackend:
    name = "cpu"

    def __init__(self, threads: int | None = None, simd: str | None = None) -> None:
        available = numba.config.NUMBA_NUM_THREADS
        if threads is not None and not 1 <= threads <= available:
            raise KernError(f"--threads {threads}: expected 1..{available} on this machine")
        self.threads = threads or available
        self.simd = choose_simd(simd)
        self.lanes = 16 if self.simd == "avx512" else 8

    def _use_threads(self) -> None:
        # Numba's thread count is per calling thread; set it for each call of this backend.
        numba.set_num_threads(self.threads)

    def asarray(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """NCHW -> this backend's NHWC (into `out` where given)."""
        nhwc = np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1)
        if out is None:
            return np.ascontiguousarray(nhwc)
        np.copyto(out, nhwc)
        return out

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        """NHWC -> NCHW, always a copy: x may be a place in a network's arena, which the next
        pass overwrites (ascontiguousarray returns (N, 1, 1, C) as it is, a view)."""
        return x.transpose(0, 3, 1, 2).copy()

    def prepare_conv(self, weights, bias, bn, *, stride, padding, groups, activation) -> CpuConv:
        (pad_h, pad_w), (k_h, k_w) = pair(padding), weights.shape[2:]
        for size, pad in ((k_h, pad_h), (k_w, pad_w)):
            _check_window(size, stride, pad)  # the kernels index without bounds checks
        w, b = fold_batchnorm(weights, bias, bn)
        filters, group_channels, ksize, _ = w.shape
        act = activation_code(activation)
        if (k_h, pad_h) != (k_w, pad_w):  # Caffe's 1x7 and 7x1: the GEMM alone, never linked
            packed = conv.pack_weights(w, groups)
            return CpuConv(packed, b, False, filters, k_h, stride, pad_h, act, shape_w=(k_w, pad_w))
        padding = pad_h
        in_lanes = grouped.lane_groups_fit(groups, group_channels, filters // groups)
        plain = None
        if depthwise.fits(groups, group_channels, filters // groups):
            packed = depthwise.pack_weights(w)
            return CpuConv(packed, b, False, filters, ksize, stride, padding, act, depthwise=packed)
        if in_lanes:
            packed, b = grouped.pack_lane_weights(w, b, groups)
        else:
            packed = conv.pack_weights(w, groups)
            if winograd_plain.fits(ksize, stride, padding, groups, group_channels):
                plain = winograd_plain.pack_weights(w)
        return CpuConv(packed, b, in_lanes, filters, ksize, stride, padding, act, plain_winograd=plain)

    def conv2d(self, x: np.ndarray, c: CpuConv, *, out: np.ndarray | None = None) -> np.ndarray:
        self._use_threads()
        if c.depthwise is not None:
            n_images, height, width, _ = x.shape
            out_h = conv_output_size(height, c.ksize, c.stride, c.padding)
            out_w = conv_output_size(width, c.ksize, c.stride, c.padding)
            out = output_array((n_images, out_h, out_w, c.filters), out)
            x = np.ascontiguousarray(x)
            depthwise.conv2d_depthwise(x, c.depthwise, c.bias, c.stride, c.padding, c.act, out)
            return out
        lanes_out = c.out_order is not None
        if c.winograd is not None and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:  # even outputs
            return winograd.conv2d_lane_winograd(x, c.winograd, c.bias, c.filters, c.act, lanes_out, out)
        if c.groups_in_lanes:
            return grouped.conv2d_lane_groups(
                x, c.packed, c.bias, c.ksize, c.stride, c.padding, c.act, c.input_ready, lanes_out, out
            )
        if c.plain_winograd is not None:  # never set on a conv linked in lane order (link_convs clears it)
            return winograd_plain.conv2d_winograd(
                x, c.plain_winograd, c.bias, c.filters, c.act, out=out, input_padded=c.input_padded,
                out_padding=c.out_padding,
            )
        return conv.conv2d_gemm(
            x, c.packed, c.bias, c.filters, c.ksize, c.stride, c.padding, c.act,
            out_planes=c.out_planes, out_padding=c.out_padding, lanes=self.lanes, input_padded=c.input_padded,
            out=out, shape_w=c.shape_w,
        )

    def conv2d_residual(self, x, c: CpuConv, residual, *, activation, out=None):
        if c.groups_in_lanes or c.depthwise is not None:  # not fused: the add after the grouped conv
            summed = self.conv2d(x, c)
            return self.shortcut(summed, residual, alpha=1.0, beta=1.0, activation=activation, out=out)
        self._use_threads()  # the add and its activation are fused into the GEMM's store
        if c.plain_winograd is not None:
            return winograd_plain.conv2d_winograd(
                x, c.plain_winograd, c.bias, c.filters, c.act, residual, activation_code(activation), out=out,
                input_padded=c.input_padded, out_padding=c.out_padding,
            )
        return conv.conv2d_gemm(
            x, c.packed, c.bias, c.filters, c.ksize, c.stride, c.padding, c.act, residual,
            activation_code(activation), out_planes=c.out_planes, out_padding=c.out_padding, lanes=self.lanes,
            input_padded=c.input_padded, out=out, shape_w=c.shape_w,
        )

    def link_convs(self, producer: CpuConv, consumer: CpuConv) -> tuple[CpuConv, CpuConv] | None:
        """For a convolution read only by the next one, where one of the two runs its groups
        in vector lanes and the other has one group: the first writes its output in the
        grouped one's lane order (grouped.lane_order), and the weights of the plain one are
        permuted at load time to match. Where neither is grouped and the second pads its
        input, the first writes that zero border around its output. None where nothing
        applies."""
        if producer.out_order is not None or any(
            c.depthwise is not None or c.shape_w is not None for c in (producer, consumer)
        ):
            return None
        if consumer.groups_in_lanes and not producer.groups_in_lanes:
            return self._link_into_lanes(producer, consumer)
        if producer.groups_in_lanes and not consumer.groups_in_lanes:
            return self._link_out_of_lanes(producer, consumer)
        if not producer.groups_in_lanes and consumer.padding and not consumer.input_padded:
            return replace(producer, out_padding=consumer.padding), replace(consumer, input_padded=True)
        return None

    @staticmethod
    def _link_into_lanes(producer: CpuConv, consumer: CpuConv) -> tuple[CpuConv, CpuConv] | None:
        """Into a grouped conv: the first's filters are permuted into lane order and it writes
        each block of 8 groups as a zero-padded image, so the second skips the pass that pads
        and interleaves its input (conv_lane_groups' `interleaved`)."""
        blocks = consumer.packed.shape[0]
        channels = blocks * consumer.packed.shape[2] // consumer.ksize**2 * grouped.LANES
        if consumer.input_ready or producer.filters != channels or producer.packed.shape[0] != 1:
            return None
        order = grouped.lane_order(channels, blocks)
        packed = conv.permute_filters(producer.packed, producer.filters, order)
        linked = replace(
            producer, packed=packed, bias=producer.bias[order], out_order=order, out_planes=blocks,
            out_padding=consumer.padding, plain_winograd=None,
        )
        weights = None  # 3x3 stride 1 with 16 or more channels per group: Winograd, on linked input
        if winograd.winograd_fits(consumer.ksize, consumer.stride, consumer.padding, channels // (blocks * 8)):
            oihw = grouped.unpack_lane_weights(consumer.packed, consumer.ksize)
            weights = winograd.pack_winograd_weights(oihw, blocks * grouped.LANES)
        return linked, replace(consumer, input_ready=True, winograd=weights)

    @staticmethod
    def _link_out_of_lanes(producer: CpuConv, consumer: CpuConv) -> tuple[CpuConv, CpuConv] | None:
        """Out of a grouped conv: it stores its sums in lane order as they are, without the
        transpose back to NHWC (`lanes_out`), and the second's weights read channels so."""
        if consumer.packed.shape[0] != 1 or consumer.packed.shape[2] != consumer.ksize**2 * producer.filters:
            return None
        order = grouped.lane_order(producer.filters, producer.packed.shape[0])
        packed = conv.permute_channels(consumer.packed, consumer.ksize, order)
        return replace(producer, out_order=order), replace(consumer, packed=packed, plain_winograd=None)

    def unlinked_output(self, x: np.ndarray, c: CpuConv) -> np.ndarray:
        """A linked convolution's output as conv2d gives it unlinked: (N, H, W, C) in order."""
        planes, padded_h, padded_w, plane_channels = x.shape
        q = c.out_padding
        images = x.reshape(planes // c.out_planes, c.out_planes, padded_h, padded_w, plane_channels)
        nhwc = images.transpose(0, 2, 3, 1, 4).reshape(-1, padded_h, padded_w, c.filters)
        channels = slice(None) if c.out_order is None else np.argsort(c.out_order)
        return np.ascontiguousarray(nhwc[:, q : padded_h - q, q : padded_w - q, channels])

    def prepare_connected(self, weights, bias, bn, *, activation) -> CpuConnected:
        w, b = fold_batchnorm(weights, bias, bn)
        return CpuConnected(pack_connected(w), b, w.shape[0], activation_code(activation))

    def connected(self, x: np.ndarray, fc: CpuConnected, *, out: np.ndarray | None = None) -> np.ndarray:
        self._use_threads()
        return _written(connected(x, fc.packed, fc.bias, fc.outputs, fc.act), out)

    def maxpool(self, x, *, size, stride, padding, out=None):
        _check_window(size, stride, padding)
        self._use_threads()
        n_images, height, width, channels = x.shape
        out_h = maxpool_output_size(height, size, stride, padding)
        out_w = maxpool_output_size(width, size, stride, padding)
        out = output_array((n_images, out_h, out_w, channels), out)
        pool.maxpool(x, size, stride, padding, out)
        return out

    def avgpool(self, x, *, out=None):
        self._use_threads()
        return _written(pool.avgpool(x), out)

    def softmax(self, x, *, groups, temperature, out=None):
        self._use_threads()
        # Darknet's slices run over the C, H, W order: the same as NHWC when H = W = 1.
        nchw = x if x.shape[1] == x.shape[2] == 1 else self.to_numpy(x)
        flat = elementwise.softmax_rows(nchw.reshape(x.shape[0], -1), groups, float(temperature))
        return _written(flat.reshape(x.shape) if nchw is x else self.asarray(flat.reshape(nchw.shape)), out)

    def shortcut(self, x, source, *, alpha, beta, activation, out=None):
        self._use_threads()
        out = output_array(x.shape, out)
        elementwise.shortcut(x, source, float(alpha), float(beta), activation_code(activation), out)
        return out

    def route(self, xs: Sequence[np.ndarray], *, out: np.ndarray | None = None) -> np.ndarray:
        self._use_threads()
        if any(x.shape[:3] != xs[0].shape[:3] for x in xs):  # the kernel reads every input's N, H, W
            raise ValueError(f"route: inputs {[x.shape for x in xs]} differ in batch, height or width")
        out = output_array(xs[0].shape[:3] + (sum(x.shape[3] for x in xs),), out)
        elementwise.concat_channels(tuple(np.ascontiguousarray(x) for x in xs), out)
        return out

    def crop(self, x, *, height, width, scale, shift, out=None):
        self._use_threads()
        return _written(elementwise.crop(x, height, width, float(scale), float(shift)), out)

    def activate(self, x, activation, *, out=None):
        self._use_threads()
        out = output_array(x.shape, out)
        elementwise.activate(np.ascontiguousarray(x), activation_code(activation), out)
        return out

    # ---- per-channel ops (Caffe's networks; Darknet's [batchnorm]): kern/cpu/channels.py
    def prepare_affine(self, scale, bias, *, activation, slope=None) -> CpuAffine:
        slope = np.ones_like(scale) if slope is None else slope
        scale, bias, slope = (np.ascontiguousarray(v, dtype=np.float32) for v in (scale, bias, slope))
        return CpuAffine(scale, bias, slope, activation_code(activation))

    def affine(self, x, a: CpuAffine, *, out=None):
        self._use_threads()
        out = output_array(x.shape, out)
        channels.affine(_rows(x), a.scale, a.bias, a.slope, a.act, _rows(out))
        return out

    def pool_window(self, x, *, method, kernel, stride, pad, out_size, out=None):
        self._use_threads()
        out = output_array((x.shape[0], *out_size, x.shape[3]), out)
        channels.pool_window(np.ascontiguousarray(x), method == "max", *kernel, *stride, *pad, out)
        return out

    def combine(self, x, other, *, operation, out=None):
        self._use_threads()
        out = output_array(x.shape, out)
        channels.combine(np.ascontiguousarray(x), np.ascontiguousarray(other), operation == "max", out)
        return out

    def scale_channels(self, x, factors, add=None, *, out=None):
        self._use_threads()
        n_images, channels_in = x.shape[0], x.shape[3]
        out = output_array(x.shape, out)
        x3 = np.ascontiguousarray(x).reshape(n_images, -1, channels_in)
        add3 = x3 if add is None else np.ascontiguousarray(add).reshape(x3.shape)
        factors2 = np.ascontiguousarray(factors).reshape(n_images, channels_in)
        channels.scale_channels(x3, factors2, add3, add is not None, out.reshape(x3.shape))
        return out

    def lrn(self, x, *, size, alpha, beta, k, out=None):
        self._use_threads()
        out = output_array(x.shape, out)
        channels.lrn(_rows(x), int(size), float(alpha), float(beta), float(k), _rows(out))
        return out

    def slice_channels(self, x, *, first, count, out=None):
        self._use_threads()
        out = output_array(x.shape[:3] + (count,), out)
        channels.slice_channels(_rows(x), int(first), _rows(out))
        return out

    # ---- planned memory (kern/backend.py): a network's outputs in one arena per batch size
    planned_memory = True
    route_slices = False  # NHWC slices are strided: convolutions reading them ran slower (docs/benchmarks.md)

    def arena(self, floats: int) -> np.ndarray:
        return aligned_empty(max(floats, 1))

    def arena_view(self, arena: np.ndarray, start: int, shape: tuple[int, int, int, int], first: int,
                   channels: int) -> np.ndarray:
        """The (N, C, H, W) buffer at `start` floats, as this backend's NHWC (whole: no slices)."""
        n_images, depth, height, width = shape
        if first != 0 or channels != depth:
            raise KernError(f"the CPU backend places no channel slices (asked for {first}..{first + channels})")
        return arena[start : start + n_images * depth * height * width].reshape(n_images, height, width, depth)

    def copy_into(self, out: np.ndarray, x: np.ndarray) -> None:
        """One of this backend's arrays into out (same shape)."""
        np.copyto(out, x)

    def capture(self, run: Callable[[], None]) -> None:
        """Nothing to record on the CPU: every pass runs op by op."""
        return None

    def planned_shape(self, c: CpuConv, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The (C, H, W) per image that conv2d writes for this prepared convolution: with the
        zero border a linked one writes for the next (as many floats as its planes)."""
        channels, height, width = shape
        q = c.out_padding
        return channels, height + 2 * q, width + 2 * q


def _rows(x: np.ndarray) -> np.ndarray:
    """NHWC as (pixels, channels) rows."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def _written(result: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """A small op's result, copied into its planned place where it has one."""
    if out is None:
        return result
    out = output_array(result.shape, out)
    out[...] = result
    return out
