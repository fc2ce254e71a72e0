"""The one interface every backend implements, and the registry that picks one by name.

A backend is an object; a network holds its own (no global state). Arrays go in and come out
in NCHW float32 (the `ref` backend also runs in float64 to serve as ground truth). Weights are
prepared once at load time (`prepare_conv`, `prepare_connected`): that is where a backend folds
batchnorm, packs weights into its preferred layout or copies them to the GPU. The prepared
object is opaque to the caller and only handed back to the same backend.

Optional: `link_convs(first, second) -> (first', second') | None`, offered each pair of
consecutive convolutions where nothing else reads the first's output, lets a backend pass that
output in a layout of its own; `unlinked_output(x, first')` then turns it back into what
conv2d would have returned, for a caller that stops there (the CPU backend: kern/cpu).

Optional: planned memory (`planned_memory = True`: the CPU and CUDA backends). Every op then
takes `out=`, where to write; `arena(floats)` allocates the one buffer a network's outputs
live in, `arena_view(arena, start, (N, C, H, W), first, channels)` is channels
first..first+channels of the buffer at `start` (on CUDA a convolution's or max pool's output
may be such a slice, and a convolution's input; `route_slices = False` where a backend places
none), `asarray(x, out=view)` copies host images in, `copy_into(out, x)` one of the
backend's own arrays, `capture(run) -> replay | None` records what `run` launches so that
`replay()` repeats it (CUDA graphs; None: nothing to record), and `planned_shape(prepared,
(C, H, W))`, where present, is the shape a linked convolution really writes.
nets/memory.py plans the places, nets/network.py uses them.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from kern.errors import KernError
from kern.params import BatchNorm


class Backend(Protocol):
    name: str

    def asarray(self, x: np.ndarray, out: Any = None) -> Any:
        """Host NCHW array -> this backend's array (a copy on the GPU for cuda), written into
        `out` where given (planned memory)."""

    def to_numpy(self, x: Any) -> np.ndarray:
        """This backend's array -> a host NumPy array."""

    def prepare_conv(
        self,
        weights: np.ndarray,
        bias: np.ndarray,
        bn: BatchNorm | None,
        *,
        stride: int,
        padding: int,
        groups: int,
        activation: str,
    ) -> Any:
        """Weights OIHW (I = input channels / groups), bias [O]; returns a prepared conv."""

    def conv2d(self, x: Any, conv: Any) -> Any:
        """activation(batchnorm(conv(x, weights)) + bias), NCHW -> NCHW."""

    def conv2d_residual(self, x: Any, conv: Any, residual: Any, *, activation: str) -> Any:
        """activation(conv2d(x, conv) + residual), residual of the output's shape: a convolution
        and the shortcut after it in one pass where the backend can fuse them."""

    def prepare_connected(
        self, weights: np.ndarray, bias: np.ndarray, bn: BatchNorm | None, *, activation: str
    ) -> Any:
        """Weights [outputs][inputs] (row-major, as Darknet applies them), bias [outputs]."""

    def connected(self, x: Any, fc: Any) -> Any:
        """activation(W @ flatten(x) + b) per image: (N, C, H, W) -> (N, outputs, 1, 1)."""

    def maxpool(self, x: Any, *, size: int, stride: int, padding: int) -> Any:
        """Darknet max pooling; padding is the total, the window starts at -padding//2."""

    def avgpool(self, x: Any) -> Any:
        """Global average over H and W: (N, C, H, W) -> (N, C, 1, 1)."""

    def softmax(self, x: Any, *, groups: int, temperature: float) -> Any:
        """Softmax over each of `groups` equal slices of every flattened image."""

    def shortcut(
        self, x: Any, source: Any, *, alpha: float, beta: float, activation: str
    ) -> Any:
        """Darknet's residual add: activation(alpha*x + beta*source) on the common part."""

    def route(self, xs: Sequence[Any]) -> Any:
        """Concatenate along channels (all inputs share N, H and W)."""

    def crop(self, x: Any, *, height: int, width: int, scale: float, shift: float) -> Any:
        """Centre crop to height x width, then x*scale + shift."""

    def activate(self, x: Any, activation: str) -> Any:
        """Apply one of kern.params.ACTIVATIONS element-wise."""


class TrainingBackend(Protocol):
    """The ops a network trains with (nets/train_layers.py calls them; kern/ref/training.py
    states what each computes, in NumPy). Arrays are the backend's own, as for Backend;
    gradients have the loss's sign; where an op takes `into`, it adds its result into that
    array (a gradient with other contributions already) and returns it. Parameters are
    backend arrays too (`parameter`), updated in place by `sgd_update`.

    conv2d / conv2d_backward_input / conv2d_backward_weights, bias_activate,
    activation_backward (with the bias gradient), batchnorm_forward / batchnorm_backward (Darknet's
    training batchnorm, kern/ref/batchnorm.py; the backward gets the forward's output y and its
    scales and biases: a backend may read y or recompute it from z), connected (+ both backwards),
    maxpool_forward / maxpool_backward, avgpool / avgpool_backward, softmax_cross_entropy,
    shortcut / shortcut_backward, route / route_backward, dropout_mask (a pass's mask in the
    backend's own form, made once for forward and backward) / dropout / dropout_backward, crop,
    sgd_update; and asarray, to_numpy, parameter, host, zeros, add, conv_weights (with
    `previous`, what it returned for the layer before the update: its arrays may be reused),
    new_pass (a pass begins: arrays the ops returned before may be reused) and give_back (an
    array the ops returned is dead: its memory may be reused at once).
    """

    name: str


# Explicit registry: backend name -> "module:class". Imported lazily, so that `ref` and `cpu`
# never import cupy and `ref` never compiles Numba code.
BACKENDS = {
    "ref": "kern.ref:RefBackend",
    "cpu": "kern.cpu:CpuBackend",
    "cuda": "kern.cuda.backend:CudaBackend",
    "cudasim": "kern.cudasim:CudasimBackend",
}


# The backends that train.
TRAINING_BACKENDS = {
    "ref": "kern.ref.training:RefTraining",
    "cpu": "kern.cpu.training:CpuTraining",
    "cuda": "kern.cuda.training:CudaTraining",
    "cudasim": "kern.cudasim:CudasimTraining",
}


def get_backend(name: str, **options: Any) -> Backend:
    """Make the backend called `name` ('ref', 'cpu', 'cuda', 'cudasim'); raises KernError if
    unavailable."""
    return _make(BACKENDS, name, "backend", options)


def get_training_backend(name: str, **options: Any) -> TrainingBackend:
    """Make the training ops of backend `name` ('ref', 'cpu', 'cuda', 'cudasim'); raises
    KernError if that backend does not train or is unavailable."""
    return _make(TRAINING_BACKENDS, name, "training backend", options)


def _make(registry: dict[str, str], name: str, what: str, options: dict[str, Any]) -> Any:
    if name not in registry:
        raise KernError(f"unknown {what} {name!r}; expected one of {', '.join(registry)}")
    module_name, class_name = registry[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise KernError(f"backend {name!r} is not available: {error}") from None
    return getattr(module, class_name)(**options)
