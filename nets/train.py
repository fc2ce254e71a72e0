"""Darknet's `classifier train` on kern's kernels:

    python -m nets.train DATA CFG [WEIGHTS] [--max-batches N] [--backup DIR] [--threads N]
                         [--seed S] [--clear] [--backend cpu|cuda|cudasim|ref]

DATA is a Darknet .data file: `train=` (the list of images), `labels=` (an image's class is
the label that occurs in its path), `backup=` (where checkpoints go; --backup overrides).
Without WEIGHTS the network starts from Darknet's initial weights (seeded); with them it
continues from their `seen` count (--clear: from 0). Prints Darknet's lines: `Loaded: ...`,
then per batch `batch, epoch: loss, avg avg, rate rate, seconds seconds, images images`.

Checkpoints, as Darknet's: `<backup>/<cfg name>_<epoch>.weights` at each new epoch,
`<cfg name>.backup` every 1000 batches and on Ctrl-C, `<cfg name>.weights` at the end. Each
is written whole or not at all, with a `.state` file beside it (momentum, seed): resuming
from a checkpoint kern wrote gives, batch for batch, the bits of the run that did not stop.
--max-batches N stops after batch N; the schedule keeps the cfg's max_batches= (so a run
stopped at 10 and resumed to 20 is the run of 20; edit the cfg to change the schedule).
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

import nets
from kern.errors import KernError
from nets.cli import TRAIN_COMPILE_NOTICE, ArgumentParser, notice_if_slow, run
from nets.loader import Loader, read_training_set
from nets.training import TrainingNetwork, stream

BACKUP_EVERY = 1000  # batches, as Darknet's classifier


def parse_args(argv: list[str] | None):
    parser = ArgumentParser(
        prog="python -m nets.train",
        description="Train a Darknet classifier on kern's kernels, as `darknet classifier train`.",
    )
    parser.add_argument("data", help=".data file: train=, labels=, backup=")
    parser.add_argument("cfg", help="the network's cfg (a path or a shipped cfg's name)")
    parser.add_argument("weights", nargs="?", help="weights to start from (default: Darknet's initial ones)")
    parser.add_argument(
        "--max-batches", type=int,
        help="stop after this batch number (default: the cfg's max_batches=, which the schedule keeps)",
    )
    parser.add_argument("--backup", help="folder for checkpoints (default: backup= of the .data file)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initial weights, data order, every draw")
    parser.add_argument("--clear", action="store_true", help="start counting from 0 images seen")
    parser.add_argument("--backend", choices=("cpu", "cuda", "cudasim", "ref"), default="cpu",
                        help="kernels to train on (cudasim: the CUDA kernels on the CPU, slowly)")
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error(f"--max-batches {args.max_batches}: expected a positive number of batches")
    return args


def state_path(weights: str | Path) -> Path:
    """The training state kept beside a checkpoint."""
    return Path(f"{weights}.state")


def save_checkpoint(net: TrainingNetwork, path: Path, avg_loss: float) -> None:
    """The state first, then the weights, each whole: a kill between the two leaves a state
    whose `seen` the weights do not have, which a resume then ignores (it says so)."""
    net.save_state(state_path(path), {"avg_loss": avg_loss})
    net.save_weights(path)
    print(f"Saving weights to {path}", file=sys.stderr, flush=True)


def resume_state(net: TrainingNetwork, weights: str) -> float:
    """Momentum and seed from the state beside `weights`, where there is one that fits: the
    average loss it saved (-1 where none)."""
    path = state_path(weights)
    if not path.exists():
        print(f"{weights}: no training state beside it: momentum starts at 0, seen continues at {net.seen}",
              file=sys.stderr)
        return -1.0
    try:
        meta = net.load_state(path)
    except KernError as error:
        print(f"{error}: ignored, momentum starts at 0", file=sys.stderr)
        return -1.0
    print(f"{weights}: resuming exactly at {net.seen} images seen (momentum, seed {net.seed})", file=sys.stderr)
    return float(meta.get("avg_loss", -1.0))


class Interrupt:
    """The first Ctrl-C asks to stop after the batch being trained (then the run saves); a
    second one stops at once."""

    def __init__(self) -> None:
        self.asked = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, number, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        message = "\nstopping after this batch, then saving (Ctrl-C again: stop now, unsaved)"
        print(message, file=sys.stderr, flush=True)

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    net = nets.load(args.cfg, args.weights, training=True, backend=args.backend, threads=args.threads,
                    seed=args.seed, clear=args.clear)
    last = net.solver.max_batches if args.max_batches is None else args.max_batches  # 0: no end
    avg_loss = resume_state(net, args.weights) if args.weights and not args.clear else -1.0
    dataset = read_training_set(args.data, net.classes)
    backup = Path(args.backup or dataset.backup)
    try:
        backup.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KernError(f"cannot make the backup folder {backup}: {error.strerror}") from None
    base = Path(net.spec.cfg_path).stem
    aug = net.augmentation
    count = len(dataset.paths)
    print(net.spec.table(), file=sys.stderr)
    print(base)
    solver = net.solver
    print(f"Learning Rate: {solver.learning_rate:g}, Momentum: {solver.momentum:g}, Decay: {solver.decay:g}")
    print(count)
    print(f"{aug.min_crop} {aug.max_crop}", flush=True)
    loader = Loader(dataset, aug, net.batch, net.seed, stream)
    interrupt = Interrupt()
    started, first_seen, epoch = time.perf_counter(), net.seen, net.seen // count
    try:
        while net.batch_number < last or last == 0:
            clock = time.perf_counter()
            images, classes = loader.get(net.batch_number + 1)
            print(f"Loaded: {time.perf_counter() - clock:f} seconds")
            clock = time.perf_counter()
            compiling = net.seen == first_seen and args.backend == "cpu"
            with notice_if_slow(TRAIN_COMPILE_NOTICE, 3.0) if compiling else nullcontext():
                loss = net.train_batch(images, classes)
            avg_loss = loss if avg_loss == -1 else float(np.float32(avg_loss * 0.9 + loss * 0.1))
            seconds = time.perf_counter() - clock
            epochs = net.seen / count
            print(f"{net.batch_number}, {epochs:.3f}: {loss:f}, {avg_loss:f} avg, {net.rate():f} rate, "
                  f"{seconds:f} seconds, {net.seen} images", flush=True)
            if net.seen // count > epoch:
                epoch = net.seen // count
                save_checkpoint(net, backup / f"{base}_{epoch}.weights", avg_loss)
            if net.batch_number % BACKUP_EVERY == 0 or interrupt.asked:
                save_checkpoint(net, backup / f"{base}.backup", avg_loss)
            if interrupt.asked:
                print(f"interrupted at batch {net.batch_number}: resume with python -m nets.train {args.data} "
                      f"{args.cfg} {backup / (base + '.backup')}", file=sys.stderr)
                return 130
        save_checkpoint(net, backup / f"{base}.weights", avg_loss)
    finally:
        interrupt.restore()
        loader.close()
    seconds = time.perf_counter() - started
    trained = net.seen - first_seen
    if trained:
        rate = trained / seconds
        print(f"trained {trained} images in {seconds:.1f} s: {rate:.1f} images/s, loading included",
              file=sys.stderr)
    return 0


def entry() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    sys.exit(run(main))


if __name__ == "__main__":
    entry()
