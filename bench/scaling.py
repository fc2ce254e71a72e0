"""Thread-scaling study: does kern "scale linearly" with OpenMP-style threads?

    python -m bench.scaling darknet19 --threads 1,2 [--batch 1] [--repeat 7] [--rounds 3] [--out DIR] [--busy]

For each thread count: the whole network's median forward time and every layer's median time
(random weights; one warm-up pass). The thread counts are measured in turn, --rounds times, so
that a busy spell on a shared machine falls on all of them (measured one after the other, 2
threads ran darknet19 1.04x to 1.69x faster than 1 from one run to the next on this project's
2-core machine). Prints a table of speedup S(t) = T(1)/T(t) and parallel
efficiency S(t)/t, and the serial fraction s that best fits Amdahl's law
T(t) = T(1) * (s + (1 - s)/t) (least squares), for the network and for each layer.
Writes scaling.csv and, when matplotlib is installed, scaling.png to --out (default:
bench/results/ in the checkout, which git ignores). Records Numba's
threading layer, since scaling depends on it (omp, tbb or workqueue). With --busy, the study
runs again with a spinning process on every core, and the table gives each thread count's
slowdown, and its time against 1 thread under the same load.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

import nets
from bench.layers import layer_runs
from bench.progress import Progress
from kern.timing import busy_warning

RESULTS = Path(__file__).resolve().parent / "results"


def amdahl_serial_fraction(threads: list[int], seconds: list[float]) -> float:
    """Least-squares s in T(t)/T(1) = s + (1 - s)/t, i.e. y - 1/t = s (1 - 1/t)."""
    t = np.asarray(threads, dtype=float)
    y = np.asarray(seconds) / seconds[threads.index(1)]
    x = 1 - 1 / t
    if not np.any(x):
        return float("nan")
    return float(np.clip(np.dot(y - 1 / t, x) / np.dot(x, x), 0, 1))


def measure(
    cfg: str, counts: list[int], batch: int, repeat: int, rounds: int
) -> tuple[list[float], np.ndarray]:
    """Per thread count: the median network seconds and the median seconds of each layer
    (thread counts x layers), the counts measured in turn, `rounds` times."""
    net = nets.load(cfg, random_seed=0, backend="cpu", threads=max(counts))
    images = np.random.default_rng(0).random((batch, *net.input_shape), dtype=np.float32)
    runs: dict[int, list[np.ndarray]] = {threads: [] for threads in counts}
    progress = Progress(rounds * len(counts))
    for round_ in range(rounds):
        for threads in counts:
            progress.step(f"{threads} threads, round {round_ + 1} of {rounds}")
            net.backend.threads = threads  # the cap on Numba's threads for this backend's calls
            runs[threads].append(layer_runs(net, images, repeat)[0])
    passes = [np.concatenate(runs[threads]) for threads in counts]
    return [float(np.median(p.sum(axis=1))) for p in passes], np.array([np.median(p, axis=0) for p in passes])


@contextmanager
def busy_loops(count: int) -> Iterator[None]:
    """`count` processes that spin until the block ends: a machine that other work shares."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them start
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("cfg", help="a cfg path or a shipped cfg name")
    parser.add_argument("--threads", default=None, help="comma-separated (default 1..all cores)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="thread counts measured in turn this many times")
    parser.add_argument("--out", default=str(RESULTS), help="folder for scaling.csv and scaling.png")
    parser.add_argument("--layers", type=int, default=12, help="how many of the slowest layers to list")
    parser.add_argument(
        "--busy", action="store_true",
        help="then measure again with a competing busy loop on every core, and report the slowdown",
    )
    args = parser.parse_args()
    cores = numba.config.NUMBA_NUM_THREADS
    counts = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cores + 1))
    if 1 not in counts:
        counts.insert(0, 1)
    if not all(1 <= threads <= cores for threads in counts):
        parser.error(f"--threads {args.threads}: expected counts in 1..{cores} on this machine")
    spec = nets.load_spec(args.cfg)
    if warning := busy_warning():
        print(warning)
    totals, layers_by_t = measure(args.cfg, counts, args.batch, args.repeat, args.rounds)
    print(f"# {Path(args.cfg).stem}, batch {args.batch}, {spec.flops * args.batch / 1e9:.2f} GFLOP; "
          f"Numba threading layer: {numba.threading_layer()}; {cores} cores available")
    print(f"{'threads':>7} {'ms':>9} {'GFLOP/s':>8} {'speedup':>8} {'efficiency':>10}")
    for threads, total in zip(counts, totals):
        speedup = totals[0] / total
        print(f"{threads:>7} {1e3 * total:>9.2f} {spec.flops * args.batch / total / 1e9:>8.1f} "
              f"{speedup:>8.2f} {speedup / threads:>10.2f}")
    print(f"Amdahl serial fraction (whole network): {amdahl_serial_fraction(counts, totals):.3f}")
    if args.busy:
        with busy_loops(cores):
            loaded, _ = measure(args.cfg, counts, args.batch, args.repeat, args.rounds)
        print(f"\nwith a busy loop on each of the {cores} cores (another program's work):")
        print(f"{'threads':>7} {'quiet ms':>9} {'busy ms':>9} {'slowdown':>9} {'vs 1 thread busy':>17}")
        for threads, quiet, busy in zip(counts, totals, loaded):
            ms = f"{1e3 * quiet:>9.2f} {1e3 * busy:>9.2f}"
            print(f"{threads:>7} {ms} {busy / quiet:>9.2f} {busy / loaded[0]:>17.2f}")
    best = counts.index(max(counts))
    print(f"\nslowest layers at 1 thread; speedup at {counts[best]} threads and fitted serial fraction:")
    print(f"{'layer':>5} {'':<58} {'ms@1':>8} {'speedup':>8} {'serial':>7}")
    order = np.argsort(-layers_by_t[0])[: args.layers]
    for i in order:
        layer = spec.layers[i]
        speedup = layers_by_t[0, i] / layers_by_t[best, i]
        serial = amdahl_serial_fraction(counts, list(layers_by_t[:, i]))
        ms = 1e3 * layers_by_t[0, i]
        print(f"{i:>5} {layer.describe()[:58]:<58} {ms:>8.2f} {speedup:>8.2f} {serial:>7.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scaling.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["threads", "layer", "kind", "seconds"])
        for threads, total, per_layer in zip(counts, totals, layers_by_t):
            writer.writerow([threads, "network", "all", f"{total:.6f}"])
            for layer, seconds in zip(spec.layers, per_layer):
                writer.writerow([threads, layer.index, layer.kind, f"{seconds:.6f}"])
    print(f"\nwrote {out / 'scaling.csv'}")
    plot(out / "scaling.png", Path(args.cfg).stem, counts, totals)


def plot(path: Path, name: str, counts: list[int], totals: list[float]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    speedup = [totals[0] / t for t in totals]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(counts, speedup, "o-", label="kern")
    left.plot(counts, counts, "--", color="grey", label="linear")
    left.set(xlabel="threads", ylabel="speedup", title=f"{name}: speedup")
    left.legend()
    right.plot(counts, [s / t for s, t in zip(speedup, counts)], "o-")
    right.set(xlabel="threads", ylabel="efficiency", ylim=(0, 1.1), title="parallel efficiency")
    for axes in (left, right):
        axes.set_xticks(counts)  # whole threads only
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
