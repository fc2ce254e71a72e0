"""Build a network from cfg sections (shapes checked, Darknet's layer table), and run it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kern.backend import Backend
from kern.errors import KernError
from nets.cfg import Section
from nets.layers import BUILDERS, Convolutional, Layer, Shape, Shortcut, training_only
from nets.memory import INPUT, MemoryPlan, passes_through, plan_memory
from nets.weights import expected_bytes

# [net] options that only training reads.
NET_TRAINING_ONLY = frozenset(
    "batch subdivisions momentum decay learning_rate policy power max_batches angle hue "
    "saturation exposure aspect max_crop min_crop burn_in steps scales step gamma time_steps "
    "notruth random adam B1 B2 eps center inputs clip flip rate max_ratio min_ratio".split()
)


@dataclass(frozen=True)
class NetworkSpec:
    """What a cfg describes: the input shape and the layers, with every shape checked."""

    cfg_path: str
    input_shape: Shape
    layers: tuple[Layer, ...]
    # Darknet's networks take pixels in [0, 1] and forward() refuses 0-255 ones (check_range);
    # Caffe's take mean-subtracted 0-255 values.
    pixel_check: bool = True

    @property
    def outputs(self) -> int:
        return int(np.prod(self.layers[-1].out_shape))

    @property
    def kept(self) -> frozenset[int]:
        """Layers whose outputs a later route or shortcut reads again."""
        return frozenset(i for layer in self.layers for i in layer.sources())

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers)

    def table(self) -> str:
        """Darknet's layer table (index, type, filters, size, input -> output, BFLOPs)."""
        lines = ["layer     filters    size              input                output"]
        lines += ["%5d %s" % (layer.index, layer.describe()) for layer in self.layers]
        lines.append("Total BFLOPs %.3f" % (self.flops / 1e9))
        return "\n".join(lines)


def build_network(sections: list[Section]) -> NetworkSpec:
    net = sections[0]
    shape = (
        _positive(net, "channels", 0), _positive(net, "height", 0), _positive(net, "width", 0)
    )
    net.check_unknown(NET_TRAINING_ONLY)
    input_shape = shape
    layers: list[Layer] = []
    shapes: list[Shape] = []
    for index, section in enumerate(sections[1:]):
        builder = BUILDERS.get(section.name)
        if builder is None:
            raise KernError(
                f"{section.where()}: unknown layer type [{section.name}]; expected one of "
                + ", ".join(f"[{name}]" for name in sorted(set(BUILDERS)))
            )
        layer = builder(section, index, shape, shapes)
        section.check_unknown(training_only(builder.__name__.removeprefix("build_")))
        layers.append(layer)
        shapes.append(layer.out_shape)
        shape = layer.out_shape
    if not layers:
        raise KernError(f"{net.path}: no layers after [net]")
    return NetworkSpec(net.path, input_shape, tuple(layers))


GB = 1 << 30


def memory_needed(spec: NetworkSpec, batch: int) -> tuple[int, int]:
    """Estimated bytes for the weights (as read, then folded and packed: three float32 copies)
    and for the activations of a forward pass at this batch size (the input, the outputs kept
    for a route or shortcut, and the largest layer's input and output)."""
    weights = 3 * expected_bytes(spec.layers)
    size = [4 * batch * int(np.prod(layer.out_shape)) for layer in spec.layers]
    activations = 4 * batch * int(np.prod(spec.input_shape)) + sum(size[i] for i in spec.kept) + 2 * max(size)
    return weights, activations


def available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux's MemAvailable), where known."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(spec: NetworkSpec, batch: int = 1) -> None:
    """Refuse, before allocating anything, a network that cannot fit in this machine's memory."""
    available = available_memory()
    weights, activations = memory_needed(spec, batch)
    if available is not None and weights + activations > available:
        raise KernError(
            f"{spec.cfg_path}: this network needs about {(weights + activations) / GB:.1f} GB "
            f"({weights / GB:.1f} GB for its weights, {activations / GB:.1f} GB for activations at "
            f"batch {batch}), more than the {available / GB:.1f} GB this machine has free"
        )


PIXEL_LIMIT = 16.0  # far above [0, 1], far below 0-255 pixels


def check_range(images: np.ndarray, where: str) -> None:
    """Darknet's networks take pixels scaled to [0, 1] (value / 255): refuse what looks like
    0-255 pixels, which would run and give nonsense."""
    if images.size and np.issubdtype(images.dtype, np.number):
        largest = float(np.abs(images).max())
        if largest > PIXEL_LIMIT:
            raise KernError(
                f"{where}: images hold values up to {largest:g}: expected pixels scaled to [0, 1] "
                "(value / 255, as nets.image.load_image gives them)"
            )


def _positive(section: Section, key: str, default: int) -> int:
    value = section.integer(key, default)
    if value < 1:
        raise section.error(f"needs a positive {key}=", key)
    return value


def fusable_shortcuts(layers: tuple[Layer, ...], kept: frozenset[int]) -> dict[int, Shortcut]:
    """Convolutions whose next layer is a plain shortcut (alpha = beta = 1, same shapes) and
    whose own output nobody else reads: conv index -> that shortcut, run as one fused op."""
    fused = {}
    for conv, shortcut in zip(layers, layers[1:]):
        if (
            isinstance(conv, Convolutional)
            and isinstance(shortcut, Shortcut)
            and shortcut.alpha == shortcut.beta == 1.0
            and layers[shortcut.source].out_shape == conv.out_shape
            and conv.index not in kept
        ):
            fused[conv.index] = shortcut
    return fused


@dataclass
class Placed:
    """A planned network's memory at one batch size: one arena, a view per output, and the
    recorded forward pass (backend.capture) once there is one."""

    arena: Any
    views: dict[int, Any]  # producer (nets.memory) -> its place in the arena
    replay: Callable[[], None] | None = None


class Network:
    """A network ready to run: its layers' parameters prepared on its own backend.

    On a backend with planned memory (CPU, CUDA), outputs live in one arena (sized for the
    largest batch so far) whose layout nets/memory.py chose at load (no output is allocated
    while the network runs), and on CUDA, from the second pass at a batch size on, the whole pass is one
    recorded CUDA graph. The arena is the network's own: one forward pass at a time (use
    a network per thread to run several at once).
    """

    def __init__(
        self, spec: NetworkSpec, values: list[dict[str, np.ndarray]], backend: Backend,
        labels: list[str] | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.labels = labels  # a name per output class, where known (nets.load: ImageNet's)
        self.prepared = [layer.prepare(backend, v) for layer, v in zip(spec.layers, values)]
        # Outputs read again later (route, shortcut) are kept; all others are dropped at once.
        self.kept = spec.kept
        self.fused = fusable_shortcuts(spec.layers, self.kept)
        self.linked = self._link_convs()
        self.memory: MemoryPlan | None = None
        if getattr(backend, "planned_memory", False):
            self.memory = plan_memory(
                spec.layers, spec.input_shape, self.fused,
                route_slices=getattr(backend, "route_slices", True), shapes=self._planned_shapes(),
            )
        self._placed: dict[int, Placed] = {}  # batch size -> its views (all in one arena)

    def _link_convs(self) -> frozenset[int]:
        """Let the backend pair a convolution with the next one where nothing else reads the
        first's output (backend.link_convs, where it has one): it may then pass data between
        them in its own layout. Returns the first convolutions of the pairs."""
        link = getattr(self.backend, "link_convs", None)
        if link is None:
            return frozenset()
        linked = set()
        for first, second in zip(self.spec.layers, self.spec.layers[1:]):
            read_once = first.index not in self.kept and first.index not in self.fused
            if read_once and isinstance(first, Convolutional) and isinstance(second, Convolutional):
                pair = link(self.prepared[first.index], self.prepared[second.index])
                if pair is not None:
                    self.prepared[first.index], self.prepared[second.index] = pair
                    linked.add(first.index)
        return frozenset(linked)

    def _planned_shapes(self) -> dict[int, Shape]:
        """Outputs that take another shape than their layer's in the backend's memory (a
        linked convolution writing a border for the next: backend.planned_shape)."""
        planned_shape = getattr(self.backend, "planned_shape", None)
        if planned_shape is None:
            return {}
        return {i: planned_shape(self.prepared[i], self.spec.layers[i].out_shape) for i in self.linked}

    @property
    def input_shape(self) -> Shape:
        return self.spec.input_shape

    def forward(
        self, images: np.ndarray, until: int | None = None, layer_seconds: list[float] | None = None
    ) -> np.ndarray:
        """Images (N, C, H, W) or (C, H, W) -> the output of layer `until` (default: the last).

        layer_seconds, if given, receives each layer's wall time (for profiling and scaling).
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            expected = "x".join(map(str, self.input_shape))
            raise KernError(
                f"{self.spec.cfg_path}: expected images of shape (N, {expected.replace('x', ', ')}), "
                f"got {images.shape}"
            )
        if self.spec.pixel_check:
            check_range(images, self.spec.cfg_path)
        if self.memory is not None and until is None:  # copied straight into the arena
            return self.backend.to_numpy(self._run_planned(images, layer_seconds, from_host=True))
        return self.backend.to_numpy(self.run(self.backend.asarray(images), until, layer_seconds))

    def run(self, x: Any, until: int | None = None, layer_seconds: list[float] | None = None) -> Any:
        """forward() on this backend's arrays: no checks, no copies to the host. With planned
        memory the result is a view into the arena, valid until the next run."""
        if self.memory is not None and until is None:
            return self._run_planned(x, layer_seconds)
        return self._run_layers(x, until, layer_seconds, None)

    def _run_planned(self, x: Any, layer_seconds: list[float] | None, from_host: bool = False) -> Any:
        placed = self._placed_at(x.shape[0])
        if from_host:  # host NCHW images
            self.backend.asarray(x, out=placed.views[INPUT])
        else:
            self.backend.copy_into(placed.views[INPUT], x)
        if placed.replay is not None and layer_seconds is None:
            placed.replay()
            return placed.views[self.memory.value_of[-1]]
        out = self._run_layers(placed.views[INPUT], None, layer_seconds, placed.views)
        if placed.replay is None:
            # The first pass at a batch size runs as it is (kernels get loaded); later ones
            # replay it, recorded once.
            placed.replay = self.backend.capture(
                lambda: self._run_layers(placed.views[INPUT], None, None, placed.views)
            )
        return out

    def _placed_at(self, batch: int) -> Placed:
        """The views for this batch size. One arena serves them all, sized for the largest
        batch so far (a smaller batch uses its beginning): a caller that varies the batch
        size does not collect an arena per size. A larger batch replaces it, and the views
        and recorded passes of the old one go with it."""
        if batch not in self._placed:
            plan = self.memory
            floats = plan.floats_per_image * batch
            arena = next(iter(self._placed.values())).arena if self._placed else None
            if arena is None or arena.size < floats:
                self._placed.clear()
                arena = self.backend.arena(floats)
            views = {
                producer: self.backend.arena_view(
                    arena, plan.offsets[place.root] * batch, (batch, *place.root_shape),
                    place.first, place.channels,
                )
                for producer, place in plan.places.items()
            }
            self._placed[batch] = Placed(arena, views)
        return self._placed[batch]

    def _run_layers(
        self, x: Any, until: int | None, layer_seconds: list[float] | None, views: dict[int, Any] | None
    ) -> Any:
        last = len(self.spec.layers) - 1 if until is None else until
        outputs: dict[int, Any] = {}
        for layer, prepared in zip(self.spec.layers[: last + 1], self.prepared):
            start = time.perf_counter()
            shortcut = self.fused.get(layer.index)
            if shortcut is not None and shortcut.index <= last:
                # The convolution and the shortcut after it in one pass.
                out = {} if views is None else {"out": views[shortcut.index]}
                x = self.backend.conv2d_residual(
                    x, prepared, outputs[shortcut.source], activation=shortcut.activation, **out
                )
            elif layer.index - 1 not in self.fused:  # else this shortcut ran fused above
                out = None if views is None or passes_through(layer) else views[layer.index]
                x = layer.forward(self.backend, prepared, x, outputs, out)
            if layer_seconds is not None:
                layer_seconds.append(time.perf_counter() - start)
            if layer.index in self.kept:
                outputs[layer.index] = x
        if last in self.linked:  # stopped between two linked convolutions
            x = self.backend.unlinked_output(x, self.prepared[last])
        return x

    def warm_up(self) -> None:
        """One pass on a grey image: Numba compiles the kernels this network needs on the very
        first run (or loads them from its cache), so later passes time the network alone."""
        self.predict(np.full((1, *self.input_shape), 0.5, dtype=np.float32))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Images -> (N, outputs) scores (probabilities when the cfg ends in softmax)."""
        out = self.forward(images)
        return out.reshape(out.shape[0], -1)

    @staticmethod
    def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Darknet's top_k: the k best (index, score), ties going to the lower index."""
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return [(int(i), float(scores[i])) for i in order]
