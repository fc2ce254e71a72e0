"""Darknet networks on kern backends: parse a .cfg, read a .weights, run, predict.

    net = nets.load("cfg/darknet19.cfg", "darknet19.weights", backend="cpu")
    probs = net.predict(images)          # (N, 3, H, W) float32 in [0, 1] -> (N, 1000)
    net.top_k(probs[0], 5)               # [(class index, probability), ...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kern.backend import Backend, get_backend
from nets.cfg import parse_cfg
from nets.network import Network, NetworkSpec, build_network
from nets.weights import random_weights, read_weights

__all__ = ["Network", "NetworkSpec", "load", "load_spec", "make_backend"]


def load_spec(cfg: str | Path) -> NetworkSpec:
    """Parse and shape-check a cfg, without any weights."""
    return build_network(parse_cfg(cfg))


def load(
    cfg: str | Path,
    weights: str | Path | None = None,
    *,
    backend: str = "cpu",
    threads: int | None = None,
    random_seed: int | None = None,
    dtype: type = np.float32,
) -> Network:
    """A runnable network: weights from a file, or seeded random ones (`random_seed`).

    backend: 'ref' (NumPy; `dtype=np.float64` for ground truth), 'cpu' (Numba) or 'cuda'.
    """
    spec = load_spec(cfg)
    if weights is None and random_seed is None:
        raise ValueError("give a weights file or a random_seed")
    values = (
        random_weights(spec.layers, random_seed)
        if weights is None
        else read_weights(weights, spec.layers)
    )
    return Network(spec, values, make_backend(backend, threads=threads, dtype=dtype))


def make_backend(name: str, *, threads: int | None = None, dtype: type = np.float32) -> Backend:
    """A backend by name with the options that apply to it (threads: cpu; dtype: ref)."""
    if name == "ref":
        return get_backend("ref", dtype=dtype)
    if name == "cpu":
        return get_backend("cpu", threads=threads)
    return get_backend(name)
