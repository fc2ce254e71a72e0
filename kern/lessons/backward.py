"""Steps 14 to 21 of the ladder: the backward pass, how a network learns.

On the ladder's layer, with a random gradient dY of its output (what the layers above would
send back):
- 14, 16: the input gradient and the weight gradient the textbook way, kern/ref's NumPy code
  in float32: W^T dY then col2im; im2col(x) then dY @ columns^T;
- 15, 17: the same as kern's CPU backend computes them (kern/cpu/training.py);
- 18: Darknet's training batchnorm's backward, on the layer's output;
- 19: Darknet's SGD update over as many parameters as darknet19 has;
- 20: the same backward ops as CUDA kernels (kern/cuda/train.cu): timed on a GPU, else
  checked on cudasim;
- 21: one training pass of a whole network, forward and backward layer by layer (the view of
  Caffe's `caffe time`).
Every step is checked against float64 (kern/ref). docs/lessons/14-... explain them.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kern.backend import get_training_backend
from kern.lessons.steps import Problem, Row, Step, gpu_or_cudasim, max_error, resized_cfg
from kern.ref import batchnorm as ref_batchnorm
from kern.ref.conv import conv2d_backward_input, conv2d_backward_weights
from kern.ref.training import RefTraining
from kern.timing import gpu_median_ms, median_seconds

# Darknet's update with learning_rate 0.1, momentum 0.9, decay 0.0005 and batch 128: the rate
# is divided by the batch and the decay multiplied by it.
SGD = dict(rate=0.1 / 128, momentum=0.9, decay=0.0005 * 128)


def _step(number: int, title: str, page: str, code: str, inner_loop: str, device: str = "cpu") -> Step:
    return Step(number, title, page, device, None, code, inner_loop)


BACKWARD_STEPS = (
    _step(
        14,
        "input gradient: W^T dY, then col2im",
        "14-col2im",
        "kern/ref/conv.py: conv2d_backward_input, col2im",
        "a BLAS GEMM, then K*K strided adds of the columns into the image",
    ),
    _step(
        15,
        "input gradient as a convolution",
        "15-transposed-conv",
        "kern/cpu/training.py: conv2d_backward_input",
        "the forward GEMM or Winograd, on dY and turned weights",
    ),
    _step(
        16,
        "weight gradient: im2col, then a GEMM over pixels",
        "16-weight-gradient",
        "kern/ref/conv.py: conv2d_backward_weights",
        "a BLAS GEMM whose sum runs over the pixels",
    ),
    _step(
        17,
        "weight gradient: micro-kernel, no im2col",
        "17-wgrad-micro-kernel",
        "kern/cpu/wgrad.py",
        "per 96 multiply-adds: 2 vector loads of dY, 6 broadcasts of taps",
    ),
    _step(
        18,
        "batchnorm's backward",
        "18-batchnorm-backward",
        "kern/cpu/batchnorm.py: batchnorm_backward",
        "2 sums per channel, then one pass",
    ),
    _step(
        19,
        "the SGD update",
        "19-sgd-update",
        "kern/cpu/elementwise.py: sgd_update",
        "per parameter: 2 loads, 2 stores, 3 multiply-adds",
    ),
    _step(
        20,
        "CUDA: the backward kernels",
        "20-cuda-backward",
        "kern/cuda/train.cu",
        "no float atomics: every sum one thread's or one block's tree",
        "cuda",
    ),
    _step(
        21,
        "a training pass, layer by layer",
        "21-caffe-time",
        "nets/training.py: forward_backward",
        "forward and backward of every layer",
    ),
)


class Gradients:
    """The ladder's layer with a random dY, and the float64 answers every step is checked
    against."""

    def __init__(self, p: Problem) -> None:
        rng = np.random.default_rng(3)
        self.p = p
        self.dy = rng.standard_normal(p.out_shape, dtype=np.float32)
        self.in_shape = tuple(p.x.shape[1:])
        self.ksize = p.weights.shape[2]
        x64, w64, dy64 = (a.astype(np.float64) for a in (p.x, p.weights, self.dy))
        self.dx = conv2d_backward_input(dy64, w64, self.in_shape, **self.options)
        self.dw = conv2d_backward_weights(x64, dy64, self.ksize, **self.options)
        # Batchnorm on the layer's output: z, its scales and biases.
        channels = p.out_shape[1]
        self.z = rng.standard_normal(p.out_shape, dtype=np.float32)
        self.scales = (1 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
        self.biases = (0.1 * rng.standard_normal(channels)).astype(np.float32)

    @property
    def options(self) -> dict:
        return dict(stride=self.p.stride, padding=self.p.padding, groups=self.p.groups)

    def input_gradient(self, ops) -> Callable[[], object]:
        prepared = ops.conv_weights(ops.parameter(self.p.weights), self.p.groups)
        dy = ops.asarray(self.dy)
        return lambda: ops.conv2d_backward_input(dy, prepared, in_shape=self.in_shape, **self.options)

    def weight_gradient(self, ops) -> Callable[[], object]:
        x, dy = ops.asarray(self.p.x), ops.asarray(self.dy)

        def run():
            into = ops.zeros(self.p.weights.shape)
            ops.conv2d_backward_weights(x, dy, ksize=self.ksize, into=into, **self.options)
            return into

        return run

    def batchnorm(self, ops) -> tuple[Callable[[], tuple], Callable[[tuple], float]]:
        """(run, error): run is the backward of `ops`' own training forward; error compares
        its (dz, dscales, dbiases) with float64 from the same forward's y, mean and variance
        (leaky's gradient is taken from y: y's own rounding decides each side of the kink)."""
        channels = self.p.out_shape[1]
        z, dy, scales = ops.asarray(self.z), ops.asarray(self.dy), ops.parameter(self.scales)
        rolling = (ops.zeros((channels,)), ops.parameter(np.ones(channels, np.float32)))
        biases = ops.parameter(self.biases)
        y, mean, variance = ops.batchnorm_forward(z, scales, biases, *rolling, "leaky")
        as64 = [np.asarray(ops.host(a), np.float64) for a in (mean, variance)]
        want = ref_batchnorm.batchnorm_backward(
            self.dy.astype(np.float64),
            ops.to_numpy(y).astype(np.float64),
            self.z.astype(np.float64),
            *as64,
            self.scales.astype(np.float64),
            "leaky",
        )

        def run():
            sums = ops.zeros((channels,)), ops.zeros((channels,))
            dz = ops.batchnorm_backward(
                dy, y, z, mean, variance, scales, biases, "leaky", scales_into=sums[0], biases_into=sums[1]
            )
            return dz, *sums

        def error(got: tuple) -> float:
            dz, dscales, dbiases = ops.to_numpy(got[0]), ops.host(got[1]), ops.host(got[2])
            return max(max_error(a, b) for a, b in zip((dz, dscales, dbiases), want))

        return run, error

    def sgd(self, ops, count: int) -> tuple[Callable[[], None], float]:
        """(run, error of its first call): Darknet's update on `count` random parameters."""
        rng = np.random.default_rng(4)
        weights = rng.standard_normal(count, dtype=np.float32)
        momentum = 0.01 * rng.standard_normal(count, dtype=np.float32)
        param, update = ops.parameter(weights), ops.parameter(momentum)
        want_update = momentum.astype(np.float64) + SGD["decay"] * weights.astype(np.float64)
        want_param = weights - SGD["rate"] * want_update
        want_update *= SGD["momentum"]

        def run() -> None:
            ops.sgd_update(param, update, **SGD)

        run()
        error = max(max_error(ops.host(param), want_param), max_error(ops.host(update), want_update))
        return run, error


def run_backward_steps(p: Problem, only: set[int], limits: dict, repeat: int, quick: bool) -> list[Row]:
    wanted = [step for step in BACKWARD_STEPS if step.number in only]
    if not wanted:
        return []
    g = Gradients(p)
    rows: list[Row] = []
    measured: dict[int, float] = {}
    for step in wanted:
        print(f"step {step.number}: {step.title} ...", file=sys.stderr, flush=True)
        row = MEASURE[step.number](step, g, limits, repeat, quick, measured)
        if row is not None:
            rows.append(row)
            if row.ms is not None:
                measured[step.number] = row.ms
    return rows


def _conv_row(step: Step, g: Gradients, run, expected, limits, repeat, measured, before: int, note: str) -> Row:
    error = max_error(run(), expected)
    ms = 1000 * median_seconds(run, repeat)
    gflops = 2 * g.p.macs / ms / 1e6
    speedup = measured[before] / ms if before in measured else None
    return Row(
        step.number,
        step.title,
        "cpu",
        g.p.name,
        ms,
        gflops,
        100 * gflops / limits["sgemm_gflops"],
        speedup,
        error,
        "; ".join(filter(None, (note, f"inner loop: {step.inner_loop}"))),
        0.0,
    )


def _measure_14(step, g, limits, repeat, quick, measured):
    ref = RefTraining(np.float32)
    return _conv_row(
        step,
        g,
        g.input_gradient(ref),
        g.dx,
        limits,
        repeat,
        measured,
        0,
        f"columns W^T dY: {g.p.weights[0].size} x {g.p.out_shape[2] * g.p.out_shape[3]} floats",
    )


def _measure_15(step, g, limits, repeat, quick, measured):
    from kern.cpu import winograd_plain

    cpu = get_training_backend("cpu")
    filters = g.p.weights.shape[0]
    turned = winograd_plain.fits(g.ksize, g.p.stride, g.p.padding, g.p.groups, filters)
    how = (
        "Winograd F(2x2, 3x3) on dY with the weights turned (rotated 180 degrees, filters and channels swapped)"
        if turned
        else "one convolution of dY per phase of the stride, with the weights turned"
    )
    run = g.input_gradient(cpu)
    return _conv_row(step, g, lambda: cpu.to_numpy(run()), g.dx, limits, repeat, measured, 14, how)


def _measure_16(step, g, limits, repeat, quick, measured):
    return _conv_row(
        step,
        g,
        g.weight_gradient(RefTraining(np.float32)),
        g.dw,
        limits,
        repeat,
        measured,
        0,
        "dW = dY (F x pixels) @ im2col(x)^T (pixels x taps)",
    )


def _measure_17(step, g, limits, repeat, quick, measured):
    cpu = get_training_backend("cpu")
    run = g.weight_gradient(cpu)
    return _conv_row(
        step,
        g,
        lambda: np.asarray(cpu.host(run())),
        g.dw,
        limits,
        repeat,
        measured,
        16,
        "the taps read where they lie in the padded channels-last input",
    )


def _measure_18(step, g, limits, repeat, quick, measured):
    cpu, ref = get_training_backend("cpu"), RefTraining(np.float32)
    run, error = g.batchnorm(cpu)
    checked = error(run())
    ms = 1000 * median_seconds(run, repeat)
    numpy_run, _ = g.batchnorm(ref)
    numpy_ms = 1000 * median_seconds(numpy_run, repeat)
    moved = 7 * 4 * g.dy.size  # two passes: dy, y, z read twice; dz written
    note = (
        f"{moved / ms / 1e6:.1f} GB/s over 7 arrays' bytes "
        f"(NumPy's copy, one thread: {limits['memory_gbs']:.1f}); "
        f"kern/ref in float32 (NumPy): {numpy_ms:.2f} ms"
    )
    return Row(step.number, step.title, "cpu", g.p.name, ms, None, None, numpy_ms / ms, checked, note, 0.0)


def _measure_19(step, g, limits, repeat, quick, measured):
    count = 1 << 20 if quick else darknet19_parameters()
    run, error = g.sgd(get_training_backend("cpu"), count)
    ms = 1000 * median_seconds(run, repeat)
    note = (
        f"{count:,} parameters: {16 * count / ms / 1e6:.1f} GB/s over 16 bytes each "
        f"(NumPy's copy, one thread: {limits['memory_gbs']:.1f})"
    )
    return Row(step.number, step.title, "cpu", f"{count:,} parameters", ms, None, None, None, error, note, 0.0)


def darknet19_parameters() -> int:
    import nets
    from nets.data import find_cfg

    return sum(
        int(np.prod(s.shape)) for layer in nets.load_spec(find_cfg("darknet19")).layers for s in layer.params()
    )


def _measure_20(step, g, limits, repeat, quick, measured):
    ops, on_gpu = cuda_training()
    if ops is None:
        return None
    input_gradient, weight_gradient = g.input_gradient(ops), g.weight_gradient(ops)
    batchnorm, batchnorm_error = g.batchnorm(ops)
    update, update_error = g.sgd(ops, 1 << 16)
    errors = {
        "input gradient": max_error(ops.to_numpy(input_gradient()), g.dx),
        "weight gradient": max_error(ops.host(weight_gradient()), g.dw),
        "batchnorm": batchnorm_error(batchnorm()),
        "update": update_error,
    }
    note = "max error: " + ", ".join(f"{name} {value:.1e}" for name, value in errors.items())
    ms = gflops = None
    if on_gpu:
        ms = gpu_median_ms(lambda: (input_gradient(), weight_gradient()))
        gflops = 4 * g.p.macs / ms / 1e6
        note += f"; input + weight gradient {ms:.3f} ms"
    else:
        note += "; cudasim: checked, not timed"
    return Row(
        step.number, step.title, ops.name, g.p.name, ms, gflops, None, None, max(errors.values()), note, 0.0
    )


def cuda_training():
    """CUDA's training ops on a GPU where there is one, else cudasim's (None: neither)."""
    return gpu_or_cudasim(get_training_backend, "step 20")


def _measure_21(step, g, limits, repeat, quick, measured):
    """darknet19 at its cfg's 256 x 256 (--quick: tiny at 64 x 64), batch 1, from Darknet's
    initial weights: per layer the median forward and backward ms. Checked against a float64
    pass: the loss and the last convolution's weight gradient (the first the backward
    makes). Deeper gradients are shown, not bounded: where a leaky output lies within
    float32's rounding of 0 the two passes take different slopes (docs/lessons/21)."""
    import nets
    from nets.data import find_cfg
    from nets.training import stream

    name, size = ("tiny", 64) if quick else ("darknet19", 256)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}{size}.cfg"
        path.write_text(resized_cfg(find_cfg(name).read_text(), size))
        net = nets.load(path, training=True, backend="cpu")
        reference = nets.load(path, training=True, backend="ref", dtype=np.float64)
    images = np.random.default_rng(5).random((1, *net.spec.input_shape), dtype=np.float32)
    labels = np.array([7])
    loss, want_loss = (n.forward_backward(images, labels, stream(0, 1, 1, 0)) for n in (net, reference))
    convs = [i for i, t in enumerate(net.layers) if t.layer.kind == "conv"]

    def weight_error(i: int) -> float:
        got = np.asarray(net.ops.host(net.layers[i].updates["weights"]), np.float64)
        return max_error(got, reference.ops.host(reference.layers[i].updates["weights"]))

    error = max(abs(loss - want_loss) / abs(want_loss), weight_error(convs[-1]))
    first_layer = weight_error(convs[0])  # now: the timed passes below add to the gradients
    passes = []
    for _ in range(repeat):
        times: list[list[float]] = []
        net.forward_backward(images, labels, stream(0, 1, 1, 0), layer_seconds=times)
        passes.append(times)
    per_layer = np.median(np.array(passes), axis=0) * 1000  # (layers, 2) ms
    forward, backward = per_layer.sum(axis=0)
    share = per_layer[convs].sum() / per_layer.sum()
    note = (
        f"{name} at {size} x {size}, batch 1: forward {forward:.1f} ms, backward {backward:.1f} ms "
        f"({backward / forward:.2f}x); convolutions {share:.0%} of the pass; "
        f"first layer's weight gradient {first_layer:.1e} of float64"
    )
    rows = [[f"{t.layer.index} {t.layer.kind}", float(f), float(b)] for t, (f, b) in zip(net.layers, per_layer)]
    total = float(forward + backward)
    return Row(
        step.number, step.title, "cpu", f"{name} {size}x{size}", total, None, None, None, error, note, 0.0, rows
    )


MEASURE = {
    14: _measure_14,
    15: _measure_15,
    16: _measure_16,
    17: _measure_17,
    18: _measure_18,
    19: _measure_19,
    20: _measure_20,
    21: _measure_21,
}
