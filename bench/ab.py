"""Interleaved A/B of whole networks: an earlier commit (A) against the working tree (B).

    python -m bench.ab HEAD~1 darknet53 resnet50 --batch 8 --rounds 5 [--repeat 3] [--threads 2] [--train]

A is a temporary `git worktree` of the revision, removed at the end. Each round runs, for
every cfg, one fresh process on A and then one on B (`python -m bench.forward`: one warm-up
pass, then the median of --repeat; with --train `python -m bench.train --peers kern`: one
training step of --batch images, warm-up, then the median of --repeat), so that a busy spell
of a shared machine falls on both.
Prints each side's median over the rounds, B/A, and in how many rounds B was faster: a change
is kept when B is faster in most rounds, not when one median says so. Each side compiles its
own kernels into its own tree's cache on its first run (the first round waits for that).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.progress import Progress
from kern.errors import KernError

REPO = Path(__file__).resolve().parent.parent


def forward_ms(tree: Path, cfg: str, batch: int, repeat: int, threads: int) -> float:
    """One fresh process in `tree`: bench.forward's median ms for cfg."""
    command = [sys.executable, "-m", "bench.forward", cfg, "--threads", str(threads), "--batch", str(batch),
               "--repeat", str(repeat)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise KernError(f"{tree}: bench.forward {cfg} failed: {last}")
    return float(done.stdout.strip().splitlines()[-1].split()[3])  # network threads batch ms GFLOP/s


def train_step_ms(tree: Path, cfg: str, batch: int, repeat: int, threads: int) -> float:
    """One fresh process in `tree`: bench.train's median ms of one of kern's training steps."""
    command = [sys.executable, "-m", "bench.train", cfg, "--peers", "kern", "--threads", str(threads),
               "--batch", str(batch), "--repeat", str(repeat)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[1:2] == ["kern"]]
    if done.returncode != 0 or not rows:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise KernError(f"{tree}: bench.train {cfg} failed: {last}")
    return float(rows[-1][2])  # threads peer ms/step images/s peak MB ratio


def summary(name: str, a: list[float], b: list[float]) -> str:
    faster = sum(y < x for x, y in zip(a, b))
    rounds = f"A {[round(x, 1) for x in a]}  B {[round(y, 1) for y in b]}"
    return (
        f"{name:<14} A {np.median(a):8.1f} ms  B {np.median(b):8.1f} ms  B/A {np.median(b) / np.median(a):.3f}"
        f"  B faster in {faster} of {len(a)} rounds   {rounds}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="the commit to measure against (A)")
    parser.add_argument("cfgs", nargs="+", help="cfg paths or shipped cfg names")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="time training steps (bench.train), not passes")
    args = parser.parse_args()
    measure = train_step_ms if args.train else forward_ms
    with tempfile.TemporaryDirectory(prefix="kern-ab-") as folder:
        tree = Path(folder) / "a"
        made = subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.revision],
                              cwd=REPO, capture_output=True, text=True)
        if made.returncode != 0:
            print(f"bench.ab: {args.revision}: {made.stderr.strip()}", file=sys.stderr)
            raise SystemExit(2)
        try:
            times = {cfg: ([], []) for cfg in args.cfgs}
            progress = Progress(args.rounds * len(args.cfgs))
            what = "training steps" if args.train else "passes"
            print(f"# A = {args.revision}, B = the working tree; batch {args.batch}, {args.threads} threads, "
                  f"median of {args.repeat} {what} per process", flush=True)
            for round_ in range(args.rounds):
                for cfg in args.cfgs:
                    progress.step(f"{cfg}, round {round_ + 1} of {args.rounds}")
                    a, b = times[cfg]
                    a.append(measure(tree, cfg, args.batch, args.repeat, args.threads))
                    b.append(measure(REPO, cfg, args.batch, args.repeat, args.threads))
            for cfg, (a, b) in times.items():
                print(summary(Path(cfg).stem, a, b))
        except KernError as error:
            print(f"bench.ab: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
