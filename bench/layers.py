"""Per-layer profile: where a network's time goes, kern next to PyTorch, layer by layer.

    python -m bench.layers cfg/resnext50.cfg cfg/resnet50.cfg [--threads 2] [--repeat 10] [--rounds 3]

Both run the same graph with the same random weights (PyTorch through bench/torch_backend.py;
without torch, kern alone). Each layer's median time over --repeat passes after a warm-up,
then a summary by kind of layer: convolutions split into 1x1, dense KxK and grouped, each
with its GFLOP/s. The grouped-against-dense line is issue 3's measure of grouped convolution.
"""

from __future__ import annotations

import argparse

import numpy as np

import nets
from nets.layers import Convolutional, Layer
from nets.weights import random_weights


def layer_kind(layer: Layer) -> str:
    if not isinstance(layer, Convolutional):
        return layer.kind
    if layer.groups > 1:
        return "conv grouped"
    return "conv 1x1" if layer.size == 1 else "conv dense"


def layer_runs(net: nets.Network, images: np.ndarray, repeat: int) -> np.ndarray:
    """Seconds of each layer (columns) in each of `repeat` passes (rows), after a warm-up."""
    net.forward(images)
    runs = []
    for _ in range(repeat):
        seconds: list[float] = []
        net.forward(images, layer_seconds=seconds)
        runs.append(seconds)
    return np.array(runs)


def peers_for(spec: nets.NetworkSpec, threads: int) -> dict[str, nets.Network]:
    """kern and, when torch is installed, PyTorch, on the same random weights."""
    weights = random_weights(spec.layers, seed=0)
    peers = {"kern": nets.Network(spec, weights, nets.make_backend("cpu", threads=threads))}
    try:
        from bench.torch_backend import TorchBackend

        peers["torch"] = nets.Network(spec, weights, TorchBackend(threads))
    except ImportError:
        print("# torch is not installed: kern only")
    return peers


def print_profile(spec: nets.NetworkSpec, times: dict[str, np.ndarray]) -> None:
    """The per-layer table, then ms and GFLOP/s by kind of layer."""
    print(f"{'layer':>5}  {'kind':13s}" + "".join(f"{name:>9s}" for name in times) + "  description")
    for i, layer in enumerate(spec.layers):
        cells = "".join(f"{t[i]:9.2f}" for t in times.values())
        print(f"{i:5d}  {layer_kind(layer):13s}{cells}  {layer.describe().strip()}")
    print(f"{'':5s}  {'total':13s}" + "".join(f"{t.sum():9.2f}" for t in times.values()))
    print("# by kind: ms (GFLOP/s)")
    kinds = sorted({layer_kind(layer) for layer in spec.layers})
    for kind in kinds:
        chosen = [i for i, layer in enumerate(spec.layers) if layer_kind(layer) == kind]
        gflop = sum(spec.layers[i].flops for i in chosen) / 1e9
        cells = ""
        for t in times.values():
            ms = t[chosen].sum()
            cells += f"{ms:9.2f} ({gflop / ms * 1e3:6.1f})" if gflop else f"{ms:9.2f}{'':9s}"
        print(f"{'':5s}  {kind:13s}{cells}")


def profile(cfgs: list[str], threads: int, repeat: int, rounds: int) -> None:
    """Every cfg and peer in turn, `rounds` times, `repeat` passes each: a busy spell on a
    shared machine falls on all of them, so the ratios between cfgs hold."""
    specs = {cfg: nets.load_spec(cfg) for cfg in cfgs}
    peers = {cfg: peers_for(spec, threads) for cfg, spec in specs.items()}
    rng = np.random.default_rng(0)
    images = {cfg: rng.random((1, *spec.input_shape), dtype=np.float32) for cfg, spec in specs.items()}
    runs: dict[tuple[str, str], list[np.ndarray]] = {(cfg, name): [] for cfg in cfgs for name in peers[cfg]}
    for _ in range(rounds):
        for (cfg, name), passes in runs.items():
            passes.append(layer_runs(peers[cfg][name], images[cfg], repeat))
    for cfg, spec in specs.items():
        print(f"# {cfg}: {threads} threads, batch 1, median of {repeat} x {rounds} rounds; ms per layer")
        medians = {name: np.median(np.concatenate(runs[cfg, name]), axis=0) * 1e3 for name in peers[cfg]}
        print_profile(spec, medians)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cfgs", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="cfgs and peers measured in turn this many times")
    args = parser.parse_args()
    profile(args.cfgs, args.threads, args.repeat, args.rounds)


if __name__ == "__main__":
    main()
