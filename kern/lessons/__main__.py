"""python -m kern.lessons: the ladder from seven loops to kern's fastest kernels, on one layer.

    python -m kern.lessons [--quick] [--out DIR] [--layer darknet19:2] [--only N[,N...]]

Every step runs on the same real layer (darknet19's 3x3 128x128x32 -> 64 by default; step 8
on ResNeXt-50's grouped 3x3, 32x32x256 in 32 groups), is checked against the float64
definition (shown: max error relative to the largest output), timed (median) and put in a
table: ms, GFLOP/s, % of this host's sgemm limit, speedup over the step before. The CUDA steps
run on a GPU where there is one, else on cudasim: checked, not timed (a CPU simulating a GPU
says nothing of a GPU's speed), with the traffic per output the kernel's design gives.
Steps 14-21 go backward (kern/lessons/backward.py): the gradients of the same layer's input
and weights, batchnorm's backward, the SGD update, their CUDA kernels, and a whole training
pass layer by layer. `--out DIR` writes the table (ladder.txt, ladder.json) and the figures docs/lessons/ shows.
`--quick` uses small shapes (CI runs it). docs/lessons/ explains each step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numba
import numpy as np

from kern.cpu.simd import choose_simd
from kern.errors import KernError
from kern.lessons.backward import run_backward_steps
from kern.lessons.steps import (
    CPU_STEPS,
    CUDA_KERNELS,
    CUDA_STEPS,
    Problem,
    Row,
    Step,
    cpu_gemm,
    cpu_gemm_merged_groups,
    gpu_or_cudasim,
    max_error,
    resized_cfg,
)
from kern.ref import conv2d_im2col
from kern.timing import cpu_name, gpu_median_ms, median_seconds

DEFAULT_LAYER = "darknet19:2"
TOLERANCE = 1e-4  # max error, relative to the largest output, that a float32 step may have
GROUPED_LAYER = "resnext50:19"
LAST_STEP = 21


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kern.lessons", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for CI (seconds)")
    parser.add_argument("--out", type=Path, help="folder for ladder.txt, ladder.json and the figures")
    parser.add_argument(
        "--layer", default=DEFAULT_LAYER, help="CFG:INDEX of a convolution (default %(default)s)"
    )
    parser.add_argument("--only", help=f"comma-separated step numbers (default: all {LAST_STEP})")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per step, median (default %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        only = {int(n) for n in args.only.split(",")} if args.only else set(range(1, LAST_STEP + 1))
    except ValueError:
        parser.error(f"--only {args.only}: expected step numbers such as 5,6")
    if not only <= set(range(1, LAST_STEP + 1)):
        parser.error(f"--only {args.only}: steps are 1 to {LAST_STEP}")
    if args.repeat < 1:
        parser.error("--repeat: expected 1 or more")
    try:
        main_problem = problem_for(args.layer, args.quick, grouped=False)
        grouped_problem = problem_for(GROUPED_LAYER, args.quick, grouped=True)
        choose_simd()  # a bad KERN_SIMD is said now, not after the first steps
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
    except (ValueError, KernError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    limits = host_limits(args.quick)
    print(describe_host(limits), file=sys.stderr)
    rows = run_cpu_steps(main_problem, grouped_problem, only, limits, args.repeat, args.quick)
    rows += run_cuda_steps(main_problem, only, limits, args.quick)
    rows += run_backward_steps(main_problem, only, limits, args.repeat, args.quick)
    table = ladder_table(rows, main_problem, grouped_problem, limits)
    print(table)
    if args.out is not None:
        (args.out / "ladder.txt").write_text(table + "\n")
        record = {"host": limits, "rows": [asdict(r) for r in rows]}
        (args.out / "ladder.json").write_text(json.dumps(record, indent=1))
        from kern.lessons import figures

        written = figures.write_all(args.out, rows, limits, main_problem, grouped_problem)
        print(
            f"wrote {', '.join(sorted(['ladder.txt', 'ladder.json', *written]))} to {args.out}", file=sys.stderr
        )
    wrong = [r for r in rows if not r.max_error <= TOLERANCE]
    for r in wrong:
        message = f"error: step {r.step} ({r.title}): max error {r.max_error:.3g}, more than {TOLERANCE}"
        print(message, file=sys.stderr)
    return 1 if wrong else 0


# ---- the layers ----------------------------------------------------------------------------


def problem_for(layer: str, quick: bool, grouped: bool) -> Problem:
    """The layer CFG:INDEX with random input and weights (scaled so outputs stay near 1);
    --quick: a small layer of the same kind (the layer named is still checked)."""
    import nets
    from nets.data import find_cfg
    from nets.layers import Convolutional

    cfg, _, index = layer.partition(":")
    try:
        spec = nets.load_spec(find_cfg(cfg))
        chosen = spec.layers[int(index)]
    except (ValueError, IndexError, OSError, KernError) as error:
        raise ValueError(f"--layer {layer}: expected CFG:INDEX of a convolutional layer ({error})") from None
    if not isinstance(chosen, Convolutional):
        raise ValueError(f"--layer {layer}: layer {index} of {cfg} is [{chosen.kind}], not a convolution")
    rng = np.random.default_rng(0)
    if quick:
        c, hw, f, groups = (32, 10, 32, 8) if grouped else (8, 20, 16, 1)
        name = f"quick 3x3 {hw}x{hw}x{c} -> {f}" + (f", {groups} groups" if grouped else "")
        return _random(name, rng, (1, c, hw, hw), (f, c // groups, 3, 3), 1, 1, groups)
    c, h, w = chosen.in_shape
    name = f"{cfg}:{index} {chosen.size}x{chosen.size}/{chosen.stride} {w}x{h}x{c} -> {chosen.filters}"
    if chosen.groups > 1:
        name += f", {chosen.groups} groups"
    shape = (chosen.filters, c // chosen.groups, chosen.size, chosen.size)
    return _random(name, rng, (1, c, h, w), shape, chosen.stride, chosen.padding, chosen.groups)


def _random(name, rng, x_shape, w_shape, stride, padding, groups) -> Problem:
    x = rng.random(x_shape, dtype=np.float32)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    weights = (rng.standard_normal(w_shape) / np.sqrt(fan_in)).astype(np.float32)
    return Problem(name, x, weights, stride, padding, groups)


# ---- the host ------------------------------------------------------------------------------


def host_limits(quick: bool) -> dict:
    """What this host can do: NumPy's sgemm (its BLAS, all cores) on 2048^3 (512^3 with
    --quick), a copy's memory bandwidth, the cache sizes."""
    size = 512 if quick else 2048
    a = np.random.default_rng(1).random((size, size), dtype=np.float32)
    seconds = median_seconds(lambda: a @ a, 3)
    big = np.ones(8 * 2**20 if quick else 64 * 2**20, np.float32)
    copy = np.empty_like(big)
    copy_seconds = median_seconds(lambda: np.copyto(copy, big), 3)
    return {
        "sgemm_gflops": 2 * size**3 / seconds / 1e9,
        "memory_gbs": 2 * big.nbytes / copy_seconds / 1e9,
        "threads": numba.config.NUMBA_NUM_THREADS,
        "caches": caches(),
        "cpu": cpu_name(),
    }


def caches() -> dict[str, str]:
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            found[f"L{level} {kind.lower()}"] = (index / "size").read_text().strip()
        except OSError:
            continue
    return found


def describe_host(limits: dict) -> str:
    cache = ", ".join(f"{k} {v}" for k, v in limits["caches"].items())
    return (
        f"{limits['cpu']}, {limits['threads']} threads; sgemm {limits['sgemm_gflops']:.0f} GFLOP/s, "
        f"memory (copy) {limits['memory_gbs']:.1f} GB/s; {cache}"
    )


# ---- the steps -----------------------------------------------------------------------------


def reference(p: Problem) -> np.ndarray:
    """The float64 definition's values (im2col in float64: equal to the seven loops to 1e-12,
    tests/test_ops.py)."""
    return conv2d_im2col(p.x.astype(np.float64), p.weights.astype(np.float64), p.stride, p.padding, p.groups)


def traffic_bytes(step: Step, p: Problem) -> int:
    """Memory traffic at least: input, weights and output once, plus the step's own buffers."""
    return 4 * (p.x.size + p.weights.size + int(np.prod(p.out_shape))) + step.extra_bytes(p)


def scaling_note(one_ms: float, all_ms: float, threads: int) -> str:
    """Speedup S on N threads, efficiency S/N, and the serial part f of Amdahl's law
    S = 1 / (f + (1 - f)/N) that would give S: f = (1/S - 1/N) / (1 - 1/N)."""
    speedup = one_ms / all_ms
    text = f"1 thread {one_ms:.2f} ms; {threads} threads: speedup {speedup:.2f}"
    text += f", efficiency {speedup / threads:.0%}"
    if threads == 1:
        return text + " (one thread only here)"
    if speedup < 1:
        return text + " (slower: the layer is too small to share)"
    serial = (1 / speedup - 1 / threads) / (1 - 1 / threads)
    return text + f", Amdahl's serial part {max(serial, 0.0):.1%}"


def not_applicable(step: Step, p: Problem) -> str | None:
    """Why a step cannot run on this layer, if it cannot."""
    _, _, k, _ = p.weights.shape
    if step.number == 7 and (k, p.stride, p.padding, p.groups) != (3, 1, 1, 1):
        return "F(2x2, 3x3) is for 3x3 windows, stride 1, padding 1, one group"
    if step.number in (2, 4, 5) and p.groups != 1:
        return "written for one group"
    return None


def run_cpu_steps(
    main: Problem, grouped: Problem, only: set[int], limits: dict, repeat: int, quick: bool
) -> list[Row]:
    rows: list[Row] = []
    expected = {id(main): reference(main), id(grouped): reference(grouped)}
    previous_ms: float | None = None
    for step in CPU_STEPS:
        if step.number not in only:
            continue
        p = grouped if step.layer == "grouped" else main
        reason = not_applicable(step, p)
        if reason:
            print(f"step {step.number}: {step.title}: skipped, {reason}", file=sys.stderr)
            continue
        print(f"step {step.number}: {step.title} ...", file=sys.stderr, flush=True)
        note, speedup = "", None
        if step.number == 1:  # Python loops: one output row of a big layer, scaled to the layer
            out_h = p.out_shape[2]
            run, to_nchw = step.prepare(p if quick else p.rows(1))
            got = to_nchw(run())
            ms = 1000 * median_seconds(run, 1) * out_h / got.shape[2]
            count = min(got.shape[2], out_h) if quick else 1
            error = max_error(got[:, :, :count], expected[id(p)][:, :, :count])
            if not quick:
                note = f"timed on {got.shape[2]} of {out_h} output rows, scaled; checked on the first"
        elif step.number == 9:  # threads: the scaling study on step 6
            one, _ = cpu_gemm(p, threads=1)
            run, to_nchw = cpu_gemm(p)
            error = max_error(to_nchw(run()), expected[id(p)])
            one_ms = 1000 * median_seconds(one, repeat)
            ms = 1000 * median_seconds(run, repeat)
            speedup = one_ms / ms
            note = scaling_note(one_ms, ms, limits["threads"])
        else:
            run, to_nchw = step.prepare(p)
            error = max_error(to_nchw(run()), expected[id(p)])
            ms = 1000 * median_seconds(run, repeat)
        if step.number == 8:  # against step 6's GEMM on this grouped layer
            gemm_ms = 1000 * median_seconds(cpu_gemm_merged_groups(p)[0], repeat)
            speedup = gemm_ms / ms
            note = f"layer {p.name}; step 6's GEMM (groups merged into panels): {gemm_ms:.2f} ms"
        elif speedup is None and previous_ms is not None:
            speedup = previous_ms / ms
        if step.layer == "main" and step.number != 9:
            previous_ms = ms
        gflops = 2 * p.macs / ms / 1e6
        note = "; ".join(filter(None, (note, f"inner loop: {step.inner_loop}")))
        rows.append(
            Row(
                step.number,
                step.title,
                "cpu",
                p.name,
                ms,
                gflops,
                100 * gflops / limits["sgemm_gflops"],
                speedup,
                error,
                note,
                2 * p.macs / traffic_bytes(step, p),
            )
        )
    return rows


def cuda_backend():
    """The GPU where there is one, else cudasim; with the reason when neither can run."""
    from kern import get_backend

    return gpu_or_cudasim(get_backend, "CUDA steps")


def run_cuda_steps(p: Problem, only: set[int], limits: dict, quick: bool) -> list[Row]:
    wanted = [step for step in CUDA_STEPS if step.number in only]
    if not wanted:
        return []
    backend, on_gpu = cuda_backend()
    if backend is None:
        return []
    rows = []
    expected = reference(p)
    f = p.weights.shape[0]
    prepared = backend.prepare_conv(p.weights, np.zeros(f, np.float32), None, **p.options)
    x = backend.asarray(p.x)
    taps = p.weights.shape[1] * p.weights.shape[2] ** 2
    traffic = {
        10: f"global loads per output: {2 * taps}",
        11: f"global loads per output: {taps / 32:.1f}",
        12: f"global loads per output: {taps / 64:.1f}",
    }
    previous_ms = None
    for step in wanted:
        print(f"step {step.number}: {step.title} ({backend.name}) ...", file=sys.stderr, flush=True)
        if step.number == 13:
            rows.append(network_step(step, backend, on_gpu, quick))
            continue
        kernel = CUDA_KERNELS[step.number]

        def run(kernel: str = kernel):
            return backend.conv2d(x, prepared, kernel=kernel)

        got = backend.to_numpy(run())
        ms = gflops = speedup = None
        note = f"{traffic[step.number]}; inner loop: {step.inner_loop}"
        if on_gpu:
            ms = gpu_median_ms(run)
            gflops = 2 * p.macs / ms / 1e6
            speedup = previous_ms / ms if previous_ms else None
            previous_ms = ms
        else:
            note += "; cudasim: checked, not timed"
        rows.append(
            Row(
                step.number,
                step.title,
                backend.name,
                p.name,
                ms,
                gflops,
                None,  # no % of the CPU's sgemm for a GPU
                speedup,
                max_error(got, expected),
                note,
                2 * p.macs / traffic_bytes(step, p),
            )
        )
    return rows


def network_step(step: Step, backend, on_gpu: bool, quick: bool) -> Row:
    """Lesson 13: a whole network on the CUDA backend: darknet53 (its shortcuts fused into the
    convolutions) at 64x64 (--quick: tiny at 32x32), planned memory, a recorded graph replayed;
    checked against the CPU backend, and the replay against the pass it recorded."""
    import nets
    from kern import get_backend
    from nets.data import find_cfg
    from nets.network import Network
    from nets.weights import random_weights

    name, size = ("tiny", 32) if quick else ("darknet53", 64)
    text = find_cfg(name).read_text()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}{size}.cfg"
        path.write_text(resized_cfg(text, size))
        spec = nets.load_spec(path)
    values = random_weights(spec.layers, seed=0)
    images = np.random.default_rng(2).random((1, *spec.input_shape), dtype=np.float32)
    net = Network(spec, values, backend)
    first = net.forward(images)  # launch by launch; then recorded
    replayed = net.forward(images)
    expected = Network(spec, values, get_backend("cpu")).forward(images)
    plan = net.memory
    outputs = sum(int(np.prod(layer.out_shape)) for layer in spec.layers)
    same = np.array_equal(first, replayed)
    note = (
        f"{name} at {size}x{size}: {len(net.fused)} shortcuts fused, arena "
        f"{plan.floats_per_image * 4 / 2**20:.2f} MB for {outputs * 4 / 2**20:.2f} MB of outputs, "
        f"replay {'equal' if same else 'DIFFERS'}"
    )
    ms = None
    if on_gpu:
        x = backend.asarray(images)
        ms = gpu_median_ms(lambda: net.run(x))
        note += f", {ms:.3f} ms with graphs"
    error = max(max_error(first, expected.astype(np.float64)), 0.0 if same else float("inf"))
    return Row(
        step.number, step.title, backend.name, f"{name} {size}x{size}", ms, None, None, None, error, note, 0.0
    )


def ladder_table(rows: list[Row], main: Problem, grouped: Problem, limits: dict) -> str:
    lines = [
        f"# {describe_host(limits)}",
        f"# layer: {main.name} ({2 * main.macs / 1e9:.3f} GFLOP); step 8: {grouped.name}",
        f"{'step':>4}  {'what':<46} {'where':<8} {'ms':>9} {'GFLOP/s':>8} {'% sgemm':>8} {'speedup':>8} "
        f"{'max error':>10}",
    ]
    for r in rows:

        def cell(value, fmt):
            return format(value, fmt) if value is not None else "-"

        lines.append(
            f"{r.step:>4}  {r.title[:46]:<46} {r.where:<8} {cell(r.ms, '9.2f'):>9} {cell(r.gflops, '8.1f'):>8} "
            f"{cell(r.percent_of_sgemm, '7.0f'):>8} {cell(r.speedup, '7.2f'):>8} {r.max_error:>10.1e}"
        )
        if r.note:
            lines.append(f"{'':>6}{r.note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
