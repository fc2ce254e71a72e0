"""Darknet networks on kern backends: parse a .cfg, read a .weights, run, predict.

    net = nets.load("darknet19")         # a shipped cfg by name, or a path; weights looked up
    probs = net.predict(images)          # (N, 3, H, W) float32 in [0, 1] -> (N, 1000)
    net.top_k(probs[0], 5)               # [(class index, probability), ...]
    net.labels[index]                    # the class's name (ImageNet's for 1000 outputs)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kern import __version__
from kern.backend import Backend, TrainingBackend, get_backend, get_training_backend
from kern.errors import KernError
from nets.augment import read_augmentation
from nets.caffe.names import is_prototxt
from nets.cfg import parse_cfg
from nets.data import DEFAULT_DATA, SAMPLE_IMAGE, find_cfg, load_names
from nets.network import Network, NetworkSpec, build_network, check_memory
from nets.solver import read_solver
from nets.training import TrainingNetwork
from nets.weights import fresh_weights, random_weights, read_seen, read_weights

__all__ = [
    "SAMPLE_IMAGE", "Network", "NetworkSpec", "TrainingNetwork", "__version__", "load", "load_spec",
    "make_backend", "make_training_backend",
]


def load_spec(cfg: str | Path) -> NetworkSpec:
    """Parse and shape-check a cfg (a path, or a shipped cfg's name) or a Caffe prototxt,
    without any weights."""
    path = find_cfg(cfg)
    if is_prototxt(path):
        from nets.caffe import read_net

        return read_net(path).spec
    return build_network(parse_cfg(path))


def load(
    cfg: str | Path,
    weights: str | Path | None = None,
    *,
    backend: str = "cpu",
    threads: int | None = None,
    random_seed: int | None = None,
    dtype: type = np.float32,
    training: bool = False,
    seed: int = 0,
    clear: bool = False,
) -> Network | TrainingNetwork:
    """A runnable network: weights from a file, seeded random ones (`random_seed`), or, with
    neither, `<cfg name>.weights` found beside the cfg, among the shipped weights, in the
    working directory or in the download cache (nets.fetch).

    cfg: a path, or the name of a shipped cfg ("tiny", "darknet19", ...); or a Caffe deploy
    .prototxt, with its .caffemodel as `weights` (Caffe's preprocessing: nets.caffe.preprocess).
    backend: 'ref' (NumPy; `dtype=np.float64` for ground truth), 'cpu' (Numba), 'cuda' or
    'cudasim' (the CUDA kernels on the CPU).

    training=True: a TrainingNetwork (nets/training.py) with the cfg's batch, subdivisions
    and schedule; without weights it starts from Darknet's initial ones (seeded by `seed`),
    with them it continues from their `seen` count (0 with `clear`). Every backend trains.
    """
    from nets import fetch

    if training:
        options = dict(backend=backend, threads=threads, dtype=dtype, seed=seed, clear=clear)
        return _load_training(cfg, weights, **options)
    if is_prototxt(find_cfg(cfg)):
        options = dict(backend=backend, threads=threads, dtype=dtype, random_seed=random_seed)
        return _load_caffe(find_cfg(cfg), weights, **options)
    spec = load_spec(cfg)
    check_memory(spec)
    if random_seed is not None:
        values = random_weights(spec.layers, random_seed)
    else:
        if weights is None:
            weights = fetch.locate_weights(Path(spec.cfg_path), spec.layers)
        values = read_weights(weights, spec.layers)
    labels = load_names(DEFAULT_DATA, spec.outputs) if spec.outputs == 1000 else None
    return Network(spec, values, make_backend(backend, threads=threads, dtype=dtype), labels)


def _load_caffe(
    prototxt: str | Path, weights: str | Path | None, *, backend: str, threads: int | None, dtype: type,
    random_seed: int | None, labels: str | Path | None = None,
) -> Network:
    """A Caffe deploy .prototxt with a .caffemodel (or seeded random weights): nets/caffe."""
    from nets.caffe import caffe_values, read_net
    from nets.caffe.preprocess import caffe_labels

    if weights is None and random_seed is None:
        raise KernError(f"{prototxt}: a Caffe model needs its .caffemodel weights (or random_seed=)")
    model = read_net(prototxt)
    check_memory(model.spec)
    values = caffe_values(model, weights, random_seed)
    names = caffe_labels(model.spec.outputs, labels)
    return Network(model.spec, values, make_backend(backend, threads=threads, dtype=dtype), names)


def _load_training(
    cfg: str | Path, weights: str | Path | None, *, backend: str, threads: int | None, dtype: type, seed: int,
    clear: bool,
) -> TrainingNetwork:
    sections = parse_cfg(find_cfg(cfg))
    spec = build_network(sections)
    solver = read_solver(sections[0])
    ops = make_training_backend(backend, threads=threads, dtype=dtype)
    if weights is None:
        values, seen = fresh_weights(spec.layers, seed), 0
    else:
        values = read_weights(weights, spec.layers)
        seen = 0 if clear else read_seen(weights)
    labels = load_names(DEFAULT_DATA, spec.outputs) if spec.outputs == 1000 else None
    inference = make_backend(backend, threads=threads, dtype=dtype)
    _, height, width = spec.input_shape
    return TrainingNetwork(
        spec, sections, values, ops, solver, seen=seen, seed=seed, inference_backend=inference, labels=labels,
        augmentation=read_augmentation(sections[0], width, height),
    )


def make_training_backend(
    name: str, *, threads: int | None = None, dtype: type = np.float32
) -> TrainingBackend:
    """The training ops of a backend by name (threads: cpu; dtype: ref)."""
    if name == "ref":
        return get_training_backend("ref", dtype=dtype)
    if name == "cpu":
        return get_training_backend("cpu", threads=threads)
    return get_training_backend(name)


def make_backend(name: str, *, threads: int | None = None, dtype: type = np.float32) -> Backend:
    """A backend by name with the options that apply to it (threads: cpu; dtype: ref)."""
    if name == "ref":
        return get_backend("ref", dtype=dtype)
    if name == "cpu":
        return get_backend("cpu", threads=threads)
    return get_backend(name)
