"""Plain Winograd on or off, interleaved in one process: each network as the CPU backend
prepares it (3x3 stride-1 layers of 64+ channels through kern/cpu/winograd_plain.py) and
the same weights with those layers on the direct GEMM.

    python -m bench.winograd darknet19 densenet201 [--batch 1] [--threads 2] [--rounds 9]

One process holds both networks and runs them in turn, a pass each per round, so a busy
spell of a shared machine falls on both (fresh processes per pass, as bench.ab runs them,
spread the spells' noise over minutes: their rounds differed 2-4x here). A = the GEMM, B =
Winograd; prints each side's median, B/A and in how many rounds B was faster.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import nets
from bench.ab import summary
from bench.progress import Progress
from kern.backend import get_backend
from nets.network import Network
from nets.weights import random_weights


def without_winograd(net: Network) -> int:
    """Puts net's plain-Winograd layers on the direct GEMM; returns how many there were."""
    count = 0
    for i, prepared in enumerate(net.prepared):
        if getattr(prepared, "plain_winograd", None) is not None:
            net.prepared[i] = replace(prepared, plain_winograd=None)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.winograd", description=__doc__.splitlines()[0])
    parser.add_argument("cfgs", nargs="+", help="cfg paths or shipped cfg names")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    backend = get_backend("cpu", threads=args.threads)
    print(f"# A = direct GEMM, B = plain Winograd; batch {args.batch}, {args.threads} threads")
    progress = Progress(len(args.cfgs))
    for cfg in args.cfgs:
        progress.step(f"{cfg}: building, compiling, {args.rounds} rounds")
        spec = nets.load_spec(cfg)
        weights = random_weights(spec.layers, seed=1)
        gemm, winograd = Network(spec, weights, backend), Network(spec, weights, backend)
        layers = without_winograd(gemm)
        images = np.random.default_rng(0).random((args.batch, *spec.input_shape), dtype=np.float32)
        worst = float(np.abs(gemm.predict(images) - winograd.predict(images)).max())  # also the warm-up
        a, b = [], []
        for _ in range(args.rounds):
            for net, times in ((gemm, a), (winograd, b)):
                start = time.perf_counter()
                net.predict(images)
                times.append(1e3 * (time.perf_counter() - start))
        print(f"{summary(Path(cfg).stem, a, b)}   ({layers} Winograd layers, outputs differ by {worst:.1e})",
              flush=True)


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
