"""A network in training: Darknet's train_network on kern's backward kernels.

    net = nets.load("cifar_small", training=True)      # fresh weights, or from a .weights
    loss = net.train_batch(images, labels)             # `batch` images, class indices
    net.save_weights("cifar_small.weights")            # Darknet reads it back, and so does kern

train_batch does what Darknet's train_network does with one batch: `subdivisions` forward and
backward passes of batch/subdivisions images each, adding up gradients; `seen` grows by
`batch`; then one SGD update whose learning rate is that of batch number seen/batch. It
returns Darknet's loss: the sum of the passes' costs over `batch`. Every random draw (dropout
masks, crop windows, the `random` policy) comes from streams seeded by (seed, batch number,
pass), so a run repeats bit for bit, and resumes so, with any thread count.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kern.errors import KernError
from nets.augment import Augmentation
from nets.files import write_atomically
from nets.network import Network, NetworkSpec, check_range
from nets.solver import Solver
from nets.train_layers import Gradients, Pass, TrainSoftmax, trainable_layers
from nets.weights import Header, write_weights

# Purposes of the seeded random streams: numpy SeedSequence([seed, purpose, batch, ...]).
STREAM_PASS, STREAM_RATE, STREAM_DATA = 1, 2, 3
STATE_VERSION = 1


def stream(seed: int, purpose: int, *indices: int) -> np.random.Generator:
    """An independent generator for one purpose and batch (and pass): the same draws whatever
    ran before, so a resumed run draws what the straight run drew."""
    return np.random.default_rng([seed, purpose, *indices])


class TrainingNetwork:
    """A network's parameters, momentum buffers and `seen` count on a training backend."""

    def __init__(
        self, spec: NetworkSpec, sections: list, values: list[dict[str, np.ndarray]], ops: Any,
        solver: Solver, *, seen: int = 0, seed: int = 0, inference_backend: Any = None,
        labels: list[str] | None = None, augmentation: Augmentation | None = None,
    ) -> None:
        self.spec = spec
        self.ops = ops
        self.solver = solver
        self.layers = trainable_layers(spec.layers, sections[1:], values, ops)
        self.seen = seen
        self.seed = seed
        self.labels = labels
        self.augmentation = augmentation  # the cfg's [net] augmentation, for nets.train's loader
        self._inference_backend = inference_backend
        self._inference: tuple[int, Network] | None = None  # (seen, network) for predict

    # ---- what the cfg says
    @property
    def batch(self) -> int:
        return self.solver.batch

    @property
    def subdivisions(self) -> int:
        return self.solver.subdivisions

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @property
    def classes(self) -> int:
        return self.spec.outputs

    @property
    def batch_number(self) -> int:
        """Updates so far, as Darknet counts them: seen / batch."""
        return self.seen // self.batch

    # ---- training
    def train_batch(self, images: np.ndarray, labels: np.ndarray) -> float:
        """One batch: `batch` images (N, C, H, W) float32 and their class indices."""
        images, labels = self._checked(images, labels)
        number = self.batch_number + 1  # this update's batch number
        size = self.solver.minibatch
        total = 0.0
        for part in range(self.subdivisions):
            window = slice(part * size, (part + 1) * size)
            rng = stream(self.seed, STREAM_PASS, number, part)
            total += self.forward_backward(images[window], labels[window], rng)
        self.seen += self.batch
        uniform = stream(self.seed, STREAM_RATE, number).random() if self.solver.policy == "random" else 0.0
        for layer in self.layers:
            layer.update(self.ops, self.solver, number, uniform)
        return total / self.batch

    def rate(self) -> float:
        """The learning rate at the current batch number (what Darknet prints)."""
        number = self.batch_number
        uniform = stream(self.seed, STREAM_RATE, number).random() if self.solver.policy == "random" else 0.0
        return self.solver.rate(number, uniform)

    def forward_backward(
        self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
        layer_seconds: list[list[float]] | None = None,
    ) -> float:
        """One pass of a mini-batch: forward, keeping what the backward reads, then backward,
        adding every parameter's gradient into its update buffer. Returns Darknet's network
        cost of the pass (the mean of its loss layers' costs, each a sum over the images).
        layer_seconds, where given, receives each layer's [forward, backward] wall time (what
        `caffe time` prints)."""
        step = Pass(np.asarray(labels), rng)
        self.ops.new_pass()  # the last pass's arrays are free again (the CPU lends them anew)
        x = self.ops.asarray(images)
        outputs: dict[int, Any] = {}
        kept = self.spec.kept
        times = [[0.0, 0.0] for _ in self.layers]
        for layer, spent in zip(self.layers, times):
            start = time.perf_counter()
            x = layer.forward(self.ops, x, outputs, step)
            if layer.layer.index in kept:
                outputs[layer.layer.index] = x
            spent[0] = time.perf_counter() - start
        grads = Gradients()
        for layer, spent in zip(reversed(self.layers), reversed(times)):
            if layer.stops_backward:
                break
            start = time.perf_counter()
            dy = grads.pop(layer.layer.index)
            if dy is not None or isinstance(layer, TrainSoftmax):
                layer.backward(self.ops, dy, grads)
            if dy is not None and not layer.hands_on_gradient:
                self.ops.give_back(dy)  # dead: the next layers' gradients may use its memory
            spent[1] = time.perf_counter() - start
        if layer_seconds is not None:
            layer_seconds[:] = times
        return float(np.mean(step.costs))

    def _checked(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        labels = np.asarray(labels)
        expected = (self.batch, *self.input_shape)
        if images.shape != expected:
            raise KernError(f"{self.spec.cfg_path}: train_batch expected images of shape {expected}, "
                            f"got {images.shape}")
        if labels.shape != (self.batch,) or not np.issubdtype(labels.dtype, np.integer):
            raise KernError(f"{self.spec.cfg_path}: expected {self.batch} integer labels, "
                            f"got {labels.dtype} {labels.shape}")
        check_range(images, self.spec.cfg_path)
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes):
            raise KernError(f"{self.spec.cfg_path}: labels must be class indices 0..{self.classes - 1}")
        return np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64)

    # ---- parameters out
    def values(self) -> list[dict[str, np.ndarray]]:
        """Every layer's parameters as float32 host arrays, named as in .weights files."""
        return [
            {name: np.asarray(self.ops.host(layer.params[name]), dtype=np.float32) for name in
             (spec.name for spec in layer.layer.params())}
            for layer in self.layers
        ]

    def save_weights(self, path: str | Path) -> None:
        """A Darknet .weights file (major 0, minor 2, `seen` as uint64), written whole."""
        write_weights(path, self.spec.layers, self.values(), Header(0, 2, 0, self.seen))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Inference with the current parameters (batchnorm with the rolling statistics, no
        dropout), on the inference backend that matches the training one."""
        if self._inference is None or self._inference[0] != self.seen:
            if self._inference_backend is None:
                raise KernError("this training network was made without an inference backend")
            network = Network(self.spec, self.values(), self._inference_backend, self.labels)
            self._inference = (self.seen, network)
        return self._inference[1].predict(images)

    # ---- what an exact resume needs besides the weights
    def save_state(self, path: str | Path, extra: dict | None = None) -> None:
        """The momentum buffers, `seen` and the seed (and `extra`, JSON), written whole."""
        arrays = {
            f"{layer.layer.index}.{name}": np.asarray(self.ops.host(buffer), dtype=np.float32)
            for layer in self.layers for name, buffer in layer.updates.items()
        }
        meta = {"version": STATE_VERSION, "seen": self.seen, "seed": self.seed, "shapes": self._signature()}
        meta.update(extra or {})

        def write(file) -> None:
            buffer = io.BytesIO()
            np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
            file.write(buffer.getvalue())

        write_atomically(path, write, "training state")

    def load_state(self, path: str | Path) -> dict:
        """Restore what save_state wrote; returns its metadata. Refuses a state of another
        network or of another checkpoint (its `seen` differs from the weights')."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {key: data[key] for key in data.files if key != "meta"}
        except (OSError, ValueError, KeyError) as error:
            raise KernError(f"{path}: not a kern training state: {error}") from None
        if meta.get("version") != STATE_VERSION or meta.get("shapes") != self._signature():
            raise KernError(f"{path}: a training state for another network")
        if meta["seen"] != self.seen:
            raise KernError(f"{path}: saved at {meta['seen']} images seen, the weights at {self.seen}")
        for layer in self.layers:
            for name, buffer in layer.updates.items():
                value = self.ops.parameter(arrays[f"{layer.layer.index}.{name}"])
                buffer[...] = value
        self.seed = int(meta["seed"])
        return meta

    def _signature(self) -> list:
        return [[t.layer.kind, *(list(np.shape(p)) for p in t.updates.values())] for t in self.layers]
