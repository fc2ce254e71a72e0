"""Per-layer profile: where a network's time goes, kern next to PyTorch, layer by layer.

    python -m bench.layers resnext50 resnet50 [--threads 2] [--batch 1] [--repeat 10] [--rounds 3] [--again]

Both run the same graph with the same random weights (PyTorch through bench/torch_backend.py;
without torch, kern alone). Each layer's median time over --repeat passes after a warm-up,
then a summary by kind of layer: convolutions split into 1x1, dense KxK and grouped, each
with its GFLOP/s. The grouped-against-dense line is issue 3's in-network measure of grouped
convolution (bench/test_ops.py times each layer shape alone).

With --again every op runs a second time at once on the same input, timed apart (the
"2nd" columns): the layer with its input and weights still in cache. Where a layer's 2nd time
is much shorter, it spends its time waiting for memory that the layers before it pushed
out of the caches, not computing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

import nets
from bench.progress import Progress
from nets.layers import Convolutional, Layer
from nets.weights import random_weights


def layer_kind(layer: Layer) -> str:
    if not isinstance(layer, Convolutional):
        return layer.kind
    if layer.groups > 1:
        return "conv grouped"
    return "conv 1x1" if layer.size == 1 else "conv dense"


class AgainBackend:
    """A backend's proxy that runs every op a second time at once, on the same input, and
    counts that run's seconds apart (all ops return new arrays: the second changes nothing)."""

    OPS = frozenset(
        "conv2d conv2d_residual connected maxpool avgpool softmax shortcut route crop activate".split()
    )

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.seconds = 0.0  # of second runs since take_seconds

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.backend, name)
        if name not in self.OPS:
            return method

        def twice(*args: Any, **options: Any) -> Any:
            out = method(*args, **options)
            start = time.perf_counter()
            method(*args, **options)
            self.seconds += time.perf_counter() - start
            return out

        return twice

    def take_seconds(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


class SplitSeconds(list):
    """Network.forward's layer_seconds for a network on an AgainBackend: each layer's wall
    time less its second runs; those go to `again`."""

    def __init__(self, backend: AgainBackend) -> None:
        super().__init__()
        self.backend = backend
        self.again: list[float] = []
        backend.take_seconds()  # drop what earlier passes left

    def append(self, seconds: float) -> None:
        again = self.backend.take_seconds()
        super().append(seconds - again)
        self.again.append(again)


def layer_runs(net: nets.Network, images: np.ndarray, repeat: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Seconds of each layer (columns) in each of `repeat` passes (rows), after a warm-up;
    and of each layer's second runs where net runs on an AgainBackend (else None)."""
    net.forward(images)
    twice = isinstance(net.backend, AgainBackend)
    runs, again = [], []
    for _ in range(repeat):
        seconds = SplitSeconds(net.backend) if twice else []
        net.forward(images, layer_seconds=seconds)
        runs.append(list(seconds))
        if twice:
            again.append(seconds.again)
    return np.array(runs), (np.array(again) if twice else None)


def random_values(cfg: str, spec: nets.NetworkSpec) -> list[dict[str, np.ndarray]]:
    """Seeded random parameters: a Caffe model's blobs (its BatchNorm and Scale layers have
    other parameters than Darknet's), or a cfg's weights."""
    path = nets.find_cfg(cfg)
    if nets.is_prototxt(path):
        from nets.caffe import caffe_values, read_net

        return caffe_values(read_net(path), None, random_seed=0)
    return random_weights(spec.layers, seed=0)


def peers_for(
    spec: nets.NetworkSpec, weights: list[dict[str, np.ndarray]], threads: int, again: bool = False
) -> dict[str, nets.Network]:
    """kern and, when torch is installed, PyTorch, on the same weights; each on an
    AgainBackend with `again`."""
    backends = {"kern": nets.make_backend("cpu", threads=threads)}
    try:
        from bench.torch_backend import TorchBackend

        backends["torch"] = TorchBackend(threads)
    except ImportError:
        print("# torch is not installed: kern only")
    return {
        name: nets.Network(spec, weights, AgainBackend(backend) if again else backend)
        for name, backend in backends.items()
    }


def print_profile(spec: nets.NetworkSpec, times: dict[str, np.ndarray], batch: int = 1) -> None:
    """The per-layer table, then ms and GFLOP/s by kind of layer (`batch` images a pass)."""
    print(f"{'layer':>5}  {'kind':13s}" + "".join(f"{name:>10s}" for name in times) + "  description")
    for i, layer in enumerate(spec.layers):
        cells = "".join(f"{t[i]:10.2f}" for t in times.values())
        print(f"{i:5d}  {layer_kind(layer):13s}{cells}  {layer.describe().strip()}")
    print(f"{'':5s}  {'total':13s}" + "".join(f"{t.sum():10.2f}" for t in times.values()))
    print("# by kind: ms (GFLOP/s)")
    kinds = sorted({layer_kind(layer) for layer in spec.layers})
    for kind in kinds:
        chosen = [i for i, layer in enumerate(spec.layers) if layer_kind(layer) == kind]
        gflop = batch * sum(spec.layers[i].flops for i in chosen) / 1e9
        cells = ""
        for t in times.values():
            ms = t[chosen].sum()
            cells += f"{ms:9.2f} ({gflop / ms * 1e3:6.1f})" if gflop and ms else f"{ms:9.2f}{'':9s}"
        print(f"{'':5s}  {kind:13s}{cells}")


def profile(
    cfgs: list[str], threads: int, repeat: int, rounds: int, again: bool = False, batch: int = 1
) -> None:
    """Every cfg and peer in turn, `rounds` times, `repeat` passes each: a busy spell on a
    shared machine falls on all of them, so the ratios between cfgs hold. With `again`,
    each peer also gets a "2nd" column: its ops run again at once (AgainBackend)."""
    specs = {cfg: nets.load_spec(cfg) for cfg in cfgs}
    print(f"preparing {', '.join(cfgs)} (random weights; kern's first pass compiles)...", file=sys.stderr)
    peers = {cfg: peers_for(spec, random_values(cfg, spec), threads, again) for cfg, spec in specs.items()}
    rng = np.random.default_rng(0)
    images = {cfg: rng.random((batch, *spec.input_shape), dtype=np.float32) for cfg, spec in specs.items()}
    runs: dict[tuple[str, str], list[np.ndarray]] = {}
    progress = Progress(rounds * sum(len(peers[cfg]) for cfg in cfgs))
    for round_ in range(rounds):
        for cfg in cfgs:
            for name, net in peers[cfg].items():
                progress.step(f"{cfg}: {name}, round {round_ + 1} of {rounds}")
                first, second = layer_runs(net, images[cfg], repeat)
                runs.setdefault((cfg, name), []).append(first)
                if second is not None:
                    runs.setdefault((cfg, f"{name} 2nd"), []).append(second)
    for cfg, spec in specs.items():
        print(f"# {cfg}: {threads} threads, batch {batch}, median of {repeat} x {rounds} rounds; ms per layer")
        columns = [name for (c, name) in runs if c == cfg]
        medians = {name: np.median(np.concatenate(runs[cfg, name]), axis=0) * 1e3 for name in columns}
        print_profile(spec, medians, batch)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__.splitlines()[0])
    parser.add_argument("cfgs", nargs="+", help="cfg paths or shipped cfg names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="images per pass")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="cfgs and peers measured in turn this many times")
    parser.add_argument("--again", action="store_true", help="also time each op run again at once (warm)")
    args = parser.parse_args()
    profile(args.cfgs, args.threads, args.repeat, args.rounds, args.again, args.batch)


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
