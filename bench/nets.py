"""Whole-network benchmark: kern against PyTorch CPU, OpenCV DNN and Darknet, in one run.

    python -m bench.nets darknet19 resnet50 --threads 2 --batch 1,8
    python -m bench.nets ResNet-50-deploy deploy_densenet121 --peers kern,torch,opencv   # Caffe models

Every peer runs the same cfg with the same random weights (written once as a .weights file)
in its own process, so its peak memory (VmHWM) is its own. Times are medians of --repeat
passes after one warm-up; with --rounds N (odd) every peer runs N times, the peers in turn,
and keeps its median: on a shared machine a busy spell then falls on all of them. A peer
that is not installed, or cannot load a cfg, gets a note. Each measurement is announced on
stderr with the time so far and an estimate of the time left.
- kern: nets.Network on the Numba CPU backend.
- torch: the same graph through bench/torch_backend.py (batchnorm folded, channels-last).
- opencv: cv2.dnn.readNetFromDarknet, or readNetFromCaffe for a .prototxt (a Caffe model, with
  random blobs written as a .caffemodel; opencv-python-headless<5; 5.x dropped the importers).
- the host's limit: PyTorch's float32 matrix product 2048^3 on the same threads (when torch
  is installed), and each row's share of it.
- darknet: Debian's `darknet` CPU build, `classifier predict` fed the same image `--repeat`
  times at its prompt; its time is (wall(repeat + 1) - wall(1)) / repeat, so it includes
  Darknet's image loading and letterboxing (a few ms), and batch 1 only.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.progress import Progress
from kern.timing import busy_warning
from nets.caffe import caffe_values, read_net
from nets.caffe.blobs import random_blobs, write_caffemodel
from nets.caffe.names import is_prototxt

PEERS = ("kern", "torch", "opencv", "darknet")
REPO = Path(__file__).resolve().parent.parent


def measure(peer: str, cfg: str, weights: str, batch: int, threads: int, repeat: int) -> float:
    """Median seconds of one forward pass of `batch` images, in this process."""
    import nets
    from bench.forward import median_seconds

    model = read_net(cfg) if is_prototxt(cfg) else None
    spec = model.spec if model else nets.load_spec(cfg)
    images = np.random.default_rng(0).random((batch, *spec.input_shape), dtype=np.float32)
    if peer == "kern":
        net = nets.load(cfg, weights, backend="cpu", threads=threads)
        return median_seconds(lambda: net.predict(images), repeat)
    if peer == "torch":
        from bench.torch_backend import TorchBackend
        from nets.weights import read_weights

        values = caffe_values(model, weights) if model else read_weights(weights, spec.layers)
        net = nets.Network(spec, values, TorchBackend(threads))
        return median_seconds(lambda: net.predict(images), repeat)
    if peer == "opencv":
        import cv2

        cv2.setNumThreads(threads)
        reader = cv2.dnn.readNetFromCaffe if model else cv2.dnn.readNetFromDarknet
        peer_net = reader(cfg, weights)
        peer_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)

        def run():
            peer_net.setInput(images)
            peer_net.forward()

        return median_seconds(run, repeat)
    raise ValueError(peer)


def measure_darknet(cfg: str, weights: str, threads: int, repeat: int) -> float:
    image = str(REPO / "data" / "dog.jpg")
    data = REPO / "cfg" / "imagenet1k.data"
    env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}

    def wall(count: int) -> float:
        start = time.perf_counter()
        subprocess.run(
            ["darknet", "classifier", "predict", str(data), cfg, weights],
            input=(image + "\n") * count, capture_output=True, text=True, check=True, cwd=REPO,
            env=env,
        )
        return time.perf_counter() - start

    return (wall(repeat + 1) - wall(1)) / repeat


def own_peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the memory map that exec
    made, where ru_maxrss also counts the parent that spawned us (this benchmark's main
    process, which held the last network's random weights: every peer then read ~1.2 GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sgemm_seconds(threads: int, size: int = 2048, repeat: int = 5) -> float:
    """The host's limit as a peer reaches it: PyTorch's float32 matrix product, size^3."""
    import torch

    from bench.forward import median_seconds

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    return median_seconds(lambda: a @ b, repeat)


def worker(args) -> None:
    """One measurement in a fresh process; prints JSON {seconds, peak_mb} or {error}."""
    try:
        cfg, weights = args.cfgs[0], args.weights
        if args.worker == "sgemm":
            print(json.dumps({"seconds": sgemm_seconds(args.threads), "peak_mb": own_peak_mb()}))
            return
        if args.worker == "darknet":
            seconds = measure_darknet(cfg, weights, args.threads, args.repeat)
            # Darknet's own process; Linux folds this small worker's peak into it at exec.
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        else:
            seconds = measure(args.worker, cfg, weights, args.batch_one, args.threads, args.repeat)
            peak = own_peak_mb()
        print(json.dumps({"seconds": seconds, "peak_mb": peak}))
    except Exception as error:  # a peer that cannot run this cfg: reported, not fatal
        print(json.dumps({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"}))


def run_worker(peer, cfg, weights, batch, threads, repeat) -> dict:
    command = [
        sys.executable, "-m", "bench.nets", cfg, "--worker", peer, "--weights", weights,
        "--batch-one", str(batch), "--threads", str(threads), "--repeat", str(repeat),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(lines[-1])


def measure_in_turn(peers, rounds, cfg, weights, batch, threads, repeat, progress: Progress) -> dict[str, dict]:
    """Each peer `rounds` times, peers alternating, so that a busy spell on a shared machine
    falls on all of them; per peer the median seconds and the largest peak."""
    runs: dict[str, list[dict]] = {peer: [] for peer in peers}
    for round_ in range(rounds):
        for peer in peers:
            progress.step(f"{Path(cfg).stem} batch {batch}: {peer}, round {round_ + 1} of {rounds}")
            runs[peer].append(run_worker(peer, cfg, weights, batch, threads, repeat))
    results = {}
    for peer, outcomes in runs.items():
        good = [r for r in outcomes if "error" not in r]
        if not good:
            results[peer] = outcomes[0]
            continue
        seconds = sorted(r["seconds"] for r in good)
        results[peer] = {"seconds": seconds[len(seconds) // 2], "peak_mb": max(r["peak_mb"] for r in good)}
    return results


def available(peer: str) -> str | None:
    """None if the peer can run here, else why not."""
    modules = {"torch": ("torch", "torch==2.13.0"), "opencv": ("cv2", "'opencv-python-headless<5'")}
    if peer in modules:
        module, package = modules[peer]
        try:
            __import__(module)
        except ImportError:
            return f"not installed (pip install {package})"
    if peer == "darknet" and shutil.which("darknet") is None:
        return "not installed (apt-get install darknet)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nets", description=__doc__.splitlines()[0])
    parser.add_argument("cfgs", nargs="+", help="cfg paths or shipped cfg names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeat", type=int, default=10, help="timed passes per measurement")
    parser.add_argument(
        "--peers", default=",".join(PEERS),
        help=f"comma-separated, from {', '.join(PEERS)}; missing ones are skipped with a note",
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run every peer this many times in turn and keep each one's median (a shared machine)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--batch-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import nets
    from nets.data import find_cfg
    from nets.weights import random_weights, write_weights

    peers = args.peers.split(",")
    for peer in peers:
        if reason := available(peer):
            print(f"# {peer}: skipped, {reason}")
    peers = [p for p in peers if available(p) is None]
    rounds = f", median of {args.rounds} rounds taken in turn" if args.rounds > 1 else ""
    from kern.cpu.simd import choose_simd
    from kern.errors import KernError

    try:
        simd = choose_simd()
    except KernError as error:
        parser.exit(2, f"error: {error}\n")
    print(
        f"# {args.threads} threads, median of {args.repeat} after a warm-up{rounds}; "
        f"ratio = peer time / kern time; kern's CPU path: {simd} (KERN_SIMD)"
    )
    limit = None
    if "torch" in peers:
        result = run_worker("sgemm", "sgemm", "", 1, args.threads, args.repeat)
        if "error" not in result:
            limit = 2 * 2048**3 / result["seconds"] / 1e9
            print(f"# host limit: PyTorch's sgemm 2048^3 on {args.threads} threads, {limit:.1f} GFLOP/s")
    if warning := busy_warning():
        print(warning)
    header = f"{'network':<28} {'batch':>5} {'peer':<8} {'ms':>9} {'GFLOP/s':>8} {'peak MB':>8}"
    print(f"{header} {'ratio':>6} {'of limit':>8}")
    batches = list(map(int, args.batch.split(",")))
    steps = sum(len([p for p in peers if p != "darknet" or b == 1]) for b in batches)
    progress = Progress(len(args.cfgs) * args.rounds * steps)
    with tempfile.TemporaryDirectory() as folder:
        for cfg in map(str, map(find_cfg, args.cfgs)):
            if is_prototxt(cfg):  # a Caffe model: random blobs in a .caffemodel
                model = read_net(cfg)
                spec, weights = model.spec, str(Path(folder) / "random.caffemodel")
                write_caffemodel(weights, random_blobs(model, seed=0))
            else:
                spec = nets.load_spec(cfg)
                weights = str(Path(folder) / "random.weights")
                write_weights(weights, spec.layers, random_weights(spec.layers, seed=0))
            name = Path(cfg).stem
            for batch in batches:
                kern_seconds = None
                chosen = [p for p in peers if p != "darknet" or batch == 1]  # darknet: batch 1 only
                results = measure_in_turn(
                    chosen, args.rounds, cfg, weights, batch, args.threads, args.repeat, progress
                )
                for peer, result in results.items():
                    if "error" in result:
                        print(f"{name:<28} {batch:>5} {peer:<8} cannot run it: {result['error']}")
                        continue
                    seconds = result["seconds"]
                    kern_seconds = kern_seconds or (seconds if peer == "kern" else None)
                    ratio = f"{seconds / kern_seconds:6.2f}" if kern_seconds else "     -"
                    gflops = spec.flops * batch / seconds / 1e9
                    # GFLOP/s counts a direct convolution's multiplies: above 100% either the
                    # limit was measured in a busy spell or the network ran Winograd layers
                    # (2.25x fewer multiplies on 3x3 stride-1 layers of 64+ channels).
                    share = f"{100 * gflops / limit:>7.0f}%" if limit else "       -"
                    if limit and gflops > limit:
                        share += " ! above the limit: Winograd's fewer multiplies, or a limit measured busy"
                    print(
                        f"{name:<28} {batch:>5} {peer:<8} {1e3 * seconds:>9.1f} {gflops:>8.1f} "
                        f"{result['peak_mb']:>8.0f} {ratio} {share}",
                        flush=True,
                    )


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
