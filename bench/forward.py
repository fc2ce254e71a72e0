"""Forward-pass time of whole networks on the CPU backend, per thread count.

    python -m bench.forward cfg/darknet19.cfg cfg/resnext50.cfg --threads 1,2 --batch 1

Random weights (timing does not depend on them); one untimed warm-up pass, then the median
of --repeat passes. Prints ms and GFLOP/s per network and thread count.
"""

from __future__ import annotations

import argparse

import numpy as np

import nets
from bench.progress import Progress
from kern.timing import median_seconds


def time_forward(cfg: str, threads: int, batch: int, repeat: int) -> float:
    net = nets.load(cfg, random_seed=0, backend="cpu", threads=threads)
    images = np.random.default_rng(0).random((batch, *net.input_shape), dtype=np.float32)
    return median_seconds(lambda: net.predict(images), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__.splitlines()[0])
    parser.add_argument("cfgs", nargs="+")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'network':<22} {'threads':>7} {'batch':>5} {'median ms':>10} {'GFLOP/s':>8}")
    counts = list(map(int, args.threads.split(",")))
    progress = Progress(len(args.cfgs) * len(counts))
    for cfg in args.cfgs:
        flops = nets.load_spec(cfg).flops * args.batch
        for threads in counts:
            progress.step(f"{cfg}, {threads} threads")
            seconds = time_forward(cfg, threads, args.batch, args.repeat)
            name = cfg.rsplit("/", 1)[-1].removesuffix(".cfg")
            gflops = flops / seconds / 1e9
            print(f"{name:<22} {threads:>7} {args.batch:>5} {1e3 * seconds:>10.1f} {gflops:>8.1f}")


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
