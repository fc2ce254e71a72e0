"""Training speed: kern against PyTorch CPU on the same network, batch and threads.

    python -m bench.train cifar_small --batch 128 --threads 1,2 [--layers] [--rounds 3]

Each peer trains the same cfg from the same initial weights on random images, in its own
process (its peak memory, VmHWM, is its own): images/s of one training step (forward,
backward and the SGD update) as the median of --repeat steps after a warm-up, and each
peer's time over kern's (peer/kern: above 1, kern is faster); with --rounds
N the peers take turns N times and keep their medians (a shared machine's busy spells fall on
both). --layers adds `caffe time`'s view: per layer, forward and backward milliseconds,
kern's as measured inside its step, PyTorch's for each layer alone (autograd.grad).
- kern: nets.load(training=True) on the CPU backend, train_batch.
- torch: bench/torch_train.py (conv2d, batch_norm in training mode, channels-last, SGD).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.nets import own_peak_mb
from bench.progress import Progress
from kern.timing import busy_warning, cpu_name

PEERS = ("kern", "torch")
REPO = Path(__file__).resolve().parent.parent


def measure(peer: str, cfg: str, weights: str, batch: int, threads: int, repeat: int, layers: bool) -> dict:
    """Median seconds of one training step of `batch` images (and per-layer seconds)."""
    import time

    import nets
    from nets.training import stream
    from nets.weights import read_weights

    spec = nets.load_spec(cfg)
    rng = np.random.default_rng(0)
    images = rng.random((batch, *spec.input_shape), dtype=np.float32)
    labels = rng.integers(0, spec.outputs, batch)
    if peer == "kern":
        net = nets.load(cfg, weights, training=True, threads=threads)
        net.solver = replace(net.solver, batch=batch, subdivisions=1)

        def step():
            net.train_batch(images, labels)

        def layer_times():
            times: list[list[float]] = []
            net.forward_backward(images, labels, stream(0, 1, 1, 0), layer_seconds=times)
            return times
    else:
        import torch

        from bench.torch_train import TorchTrainer

        trainer = TorchTrainer(spec, read_weights(weights, spec.layers), nets.load(cfg, weights, training=True,
                               backend="ref").solver, threads)
        x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels)

        def step():
            trainer.step(x, y)

        def layer_times():
            return trainer.layer_seconds(x, 1)
    step()  # compiles (kern) and warms caches
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(seconds)}
    if layers:
        runs = [layer_times() for _ in range(repeat)]
        result["layers"] = np.median(np.array(runs), axis=0).tolist()
    result["peak_mb"] = own_peak_mb()
    return result


def worker(args) -> None:
    try:
        result = measure(
            args.worker, args.cfg, args.weights, args.batch_one, args.threads_one, args.repeat, args.layers
        )
        print(json.dumps(result))
    except Exception as error:  # a peer that cannot run this cfg: reported, not fatal
        print(json.dumps({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"}))


def run_worker(peer, cfg, weights, batch, threads, repeat, layers) -> dict:
    command = [
        sys.executable, "-m", "bench.train", cfg, "--worker", peer, "--weights", weights,
        "--batch-one", str(batch), "--threads-one", str(threads), "--repeat", str(repeat),
    ] + (["--layers"] if layers else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1][:100]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("cfg", help="a cfg path or a shipped cfg's name")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="peers in turn this many times, medians kept")
    parser.add_argument("--layers", action="store_true", help="also forward and backward ms per layer")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--batch-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import nets
    from nets.data import find_cfg
    from nets.weights import fresh_weights, write_weights

    cfg = str(find_cfg(args.cfg))
    spec = nets.load_spec(cfg)
    peers = args.peers.split(",")
    threads = list(map(int, args.threads.split(",")))
    name = Path(cfg).stem
    print(f"# {name}, batch {args.batch}, {cpu_name()}; median of {args.repeat} steps after a warm-up"
          + (f", median of {args.rounds} rounds in turn" if args.rounds > 1 else ""))
    if warning := busy_warning():
        print(warning)
    print(f"{'threads':>7} {'peer':<6} {'ms/step':>9} {'images/s':>9} {'peak MB':>8} {'peer/kern':>9}")
    progress = Progress(len(threads) * len(peers) * args.rounds)
    with tempfile.TemporaryDirectory() as folder:
        weights = str(Path(folder) / "start.weights")
        write_weights(weights, spec.layers, fresh_weights(spec.layers, seed=0))
        for count in threads:
            runs: dict[str, list[dict]] = {peer: [] for peer in peers}
            for round_ in range(args.rounds):
                for peer in peers:
                    progress.step(f"{name} batch {args.batch}, {count} threads: {peer}, round {round_ + 1}")
                    result = run_worker(peer, cfg, weights, args.batch, count, args.repeat, args.layers)
                    runs[peer].append(result)
            results = {}
            for peer, outcomes in runs.items():
                good = [r for r in outcomes if "error" not in r]
                median = sorted(good, key=lambda r: r["seconds"])[len(good) // 2] if good else None
                results[peer] = median or outcomes[0]
            kern = results.get("kern", {}).get("seconds")
            for peer, result in results.items():
                if "error" in result:
                    print(f"{count:>7} {peer:<6} cannot run it: {result['error']}")
                    continue
                seconds = result["seconds"]
                ratio = f"{seconds / kern:9.2f}" if kern and "error" not in results["kern"] else "        -"
                print(f"{count:>7} {peer:<6} {1e3 * seconds:>9.1f} {args.batch / seconds:>9.1f} "
                      f"{result['peak_mb']:>8.0f} {ratio}", flush=True)
            if args.layers and all("layers" in r for r in results.values()):
                print_layers(spec, results, count)


def print_layers(spec, results: dict[str, dict], threads: int) -> None:
    """caffe time's table: per layer, forward and backward ms of each peer."""
    peers = list(results)
    heads = " ".join(f"{p + ' fwd':>10} {p + ' bwd':>10}" for p in peers)
    print(f"# per layer, {threads} threads, ms (kern: inside its step; others: the layer alone)")
    print(f"{'layer':>5} {'kind':<9} {heads}")
    totals = {p: [0.0, 0.0] for p in peers}
    for index, layer in enumerate(spec.layers):
        cells = []
        for p in peers:
            forward, backward = results[p]["layers"][index]
            totals[p][0] += forward
            totals[p][1] += backward
            cells.append(f"{1e3 * forward:>10.2f} {1e3 * backward:>10.2f}")
        print(f"{index:>5} {layer.kind:<9} {' '.join(cells)}")
    sums = " ".join(f"{1e3 * forward:>10.2f} {1e3 * backward:>10.2f}" for forward, backward in totals.values())
    print(f"{'total':>5} {'':<9} {sums}")


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
