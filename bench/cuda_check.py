"""The GPU check-and-time script: everything the CUDA backend must show, in one call.

    python -m bench.cuda_check [--quick]

1. correctness: pytest on tests/test_cuda_sources.py, tests/test_ops.py (every op on cuda
   against the float64 reference), tests/test_cuda.py (18 cfgs vs cpu, tiny's top-5) and
   tests/test_backward_cuda.py (every training op on cuda against the reference);
2. per-op: every convolution shape of darknet19, resnet50 and resnext50 (batch 1 and 64),
   kern's CUDA kernels (and kernel 3 with cp.async, checked against them) vs PyTorch +
   cuDNN (TF32 off), CUDA events, warm-up, median;
3. networks: batch-1 latency and batch-64 throughput, kern with and without CUDA graphs
   (planned memory either way) vs PyTorch eager;
4. training: one step (forward, backward, SGD update) of cifar_small at batch 128 and of
   darknet19 at 224 x 224, batch 32, kern's CUDA training kernels vs PyTorch + cuDNN
   (bench/torch_train.py, the same cfg and weights), images from the host each step;
then prints the tables last. Needs cupy, torch with CUDA and a GPU.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from kern.timing import gpu_median_ms

REPO = Path(__file__).resolve().parent.parent
NETWORKS = ("darknet19", "resnet50", "resnext50", "darknet53", "densenet201")
CONV_NETWORKS = ("darknet19", "resnet50", "resnext50")  # whose convolution shapes are timed


def cfg_path(name: str) -> Path:
    return REPO / "cfg" / f"{name}.cfg" if "/" not in name else Path(name)


def conv_rows(kern, kern_async, torch_backend, batches, names=CONV_NETWORKS) -> list[str]:
    import nets
    from nets.layers import Convolutional

    rows, seen = [], set()
    rng = np.random.default_rng(0)
    for name in names:
        for layer in nets.load_spec(cfg_path(name)).layers:
            key = (layer.in_shape, layer.describe())
            if not isinstance(layer, Convolutional) or key in seen:
                continue
            seen.add(key)
            shape = (layer.filters, layer.in_shape[0] // layer.groups, layer.size, layer.size)
            w = rng.standard_normal(shape, dtype=np.float32)
            b = np.zeros(layer.filters, np.float32)
            options = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups,
                           activation=layer.activation)
            for batch in batches:
                x = rng.random((batch, *layer.in_shape), dtype=np.float32)
                times, outputs = [], []
                for backend in (kern, kern_async, torch_backend):
                    conv, xd = backend.prepare_conv(w, b, None, **options), backend.asarray(x)
                    times.append(gpu_median_ms(lambda on=backend, xd=xd, conv=conv: on.conv2d(xd, conv)))
                    outputs.append(backend.to_numpy(backend.conv2d(xd, conv)))
                same = "yes" if np.array_equal(outputs[0], outputs[1]) else "DIFFERS"
                gflops = layer.flops * batch / times[0] / 1e6
                rows.append(f"{Path(name).stem:<10} {layer.describe()[:62]:<62} {batch:>3} {times[0]:>8.3f} "
                            f"{times[1]:>8.3f} {same:>7} {times[2]:>8.3f} {gflops:>8.0f} "
                            f"{times[2] / times[0]:>6.2f}")
    return rows


def network_rows(kern, kern_no_graphs, torch_backend, names=NETWORKS, batches=(1, 64)) -> list[str]:
    import nets
    from nets.network import Network
    from nets.weights import random_weights

    rows = []
    for name in names:
        spec = nets.load_spec(cfg_path(name))
        values = random_weights(spec.layers, seed=0)
        nets_ = [Network(spec, values, backend) for backend in (kern, kern_no_graphs, torch_backend)]
        for batch in batches:
            images = np.random.default_rng(0).random((batch, *spec.input_shape), dtype=np.float32)
            xs = [net.backend.asarray(images) for net in nets_]
            times = [gpu_median_ms(lambda net=net, x=x: net.run(x)) for net, x in zip(nets_, xs)]
            same = np.array_equal(nets_[0].forward(images), nets_[1].forward(images))
            rows.append(f"{Path(name).stem:<12} {batch:>5} {times[0]:>9.2f} {times[1]:>9.2f} {times[2]:>9.2f} "
                        f"{batch * 1000 / times[0]:>9.0f} {batch * 1000 / times[2]:>9.0f} "
                        f"{times[2] / times[0]:>6.2f} {'yes' if same else 'DIFFERS':>7}")
    return rows


TRAINING = (("cifar_small", 128, None), ("darknet19", 32, 224))  # (cfg, batch, input size)


def training_rows(backend: str, torch_device: str, runs=TRAINING, folder: Path | None = None) -> list[str]:
    """Median milliseconds of one training step, kern on `backend` vs PyTorch on torch_device.
    A run's input size, where given, replaces the cfg's (a copy written to `folder`)."""
    import tempfile

    rows = []
    folder = Path(folder or tempfile.mkdtemp())
    for name, batch, size in runs:
        cfg = cfg_path(name)
        if size is not None:
            text = cfg.read_text()
            for key in ("width", "height"):
                text = re.sub(rf"(?m)^\s*{key}\s*=.*$", f"{key}={size}", text)
            cfg = folder / f"{cfg.stem}_{size}.cfg"
            cfg.write_text(text)
        kern_ms, torch_ms = training_step_ms(cfg, batch, backend, torch_device)
        rates = f"{batch * 1000 / kern_ms:>9.0f} {batch * 1000 / torch_ms:>9.0f} {torch_ms / kern_ms:>6.2f}"
        rows.append(f"{cfg.stem:<14} {batch:>5} {kern_ms:>9.2f} {torch_ms:>9.2f} {rates}")
    return rows


def training_step_ms(cfg: Path, batch: int, backend: str, torch_device: str) -> tuple[float, float]:
    """(kern, PyTorch) median milliseconds of one step from the same fresh weights and images."""
    from dataclasses import replace

    import torch

    import nets
    from bench.torch_train import TorchTrainer
    from nets.weights import fresh_weights

    net = nets.load(cfg, training=True, backend=backend)
    net.solver = replace(net.solver, batch=batch, subdivisions=1)
    rng = np.random.default_rng(0)
    images = rng.random((batch, *net.input_shape), dtype=np.float32)
    labels = rng.integers(0, net.classes, batch)
    trainer = TorchTrainer(net.spec, fresh_weights(net.spec.layers, 0), net.solver, 1, torch_device)
    y = torch.from_numpy(labels).to(torch_device)

    def torch_step():
        x = torch.from_numpy(images).to(torch_device).contiguous(memory_format=torch.channels_last)
        trainer.step(x, y)

    kern_ms = gpu_median_ms(lambda: net.train_batch(images, labels), repeat=5, warmup=2)
    return kern_ms, gpu_median_ms(torch_step, repeat=5, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two networks, batch 1 per-op only")
    args = parser.parse_args()
    names = ("test_cuda_sources", "test_ops", "test_cuda", "test_backward_cuda")
    tests = [f"tests/{name}.py" for name in names]
    # cudasim's runs are CI's business: GPU time is scarce.
    check = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-k", "not cudasim", *tests], cwd=REPO)

    from bench.torch_backend import TorchBackend
    from kern import get_backend

    kern, torch_backend = get_backend("cuda"), TorchBackend(device="cuda")
    kern_async, kern_no_graphs = get_backend("cuda", cp_async=True), get_backend("cuda", graphs=False)
    convs = conv_rows(kern, kern_async, torch_backend, (1,) if args.quick else (1, 64))
    networks = network_rows(kern, kern_no_graphs, torch_backend, NETWORKS[:2] if args.quick else NETWORKS)
    training = training_rows("cuda", "cuda", TRAINING[:1] if args.quick else TRAINING)
    print("\n# convolutions: kern CUDA vs PyTorch cuDNN (TF32 off), median ms by CUDA events;")
    print("# cp.async: kernel 3 built with KERN_CP_ASYNC (same = bit for bit the same output)")
    header = ("network", "layer", "N", "kern ms", "cp.async", "same", "cuDNN ms", "GFLOP/s", "ratio")
    print("{:<10} {:<62} {:>3} {:>8} {:>8} {:>7} {:>8} {:>8} {:>6}".format(*header))
    print("\n".join(convs))
    print("\n# networks: ratio = PyTorch time / kern time with graphs (> 1: kern faster);")
    print("# same: graphs and no graphs give bit for bit the same output")
    header = ("network", "batch", "kern ms", "no graph", "torch ms", "kern im/s", "torch im/s", "ratio", "same")
    print("{:<12} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>7}".format(*header))
    print("\n".join(networks))
    print("\n# training: one step (images from the host, forward, backward, update), median ms;")
    print("# ratio = PyTorch time / kern time")
    header = ("network", "batch", "kern ms", "torch ms", "kern im/s", "torch im/s", "ratio")
    print("{:<14} {:>5} {:>9} {:>9} {:>9} {:>9} {:>6}".format(*header))
    print("\n".join(training))
    print(f"\ncorrectness tests: {'passed' if check.returncode == 0 else 'FAILED'}")


if __name__ == "__main__":
    from nets.cli import run  # bad input: one line, exit 2

    raise SystemExit(run(lambda argv: main() or 0))
