"""Planned activation memory: where every layer's output lives in one arena, decided at load.

A backend with `planned_memory` (CPU, CUDA) runs a network without allocating its outputs:
each is written into its place in one arena of `MemoryPlan.floats_per_image * batch` floats.

- Liveness: an output occupies its place from the step that writes it to the last step that
  reads it (the next layer, or a later route or shortcut); places of outputs that are never
  alive at the same time may overlap. Greedy: biggest buffer first, at the lowest offset that
  overlaps no buffer alive at the same time.
- Routes without copies: an input of a route is placed in its channel slice of the route's
  output where a convolution, a max pool or a route writes it and only convolutions and
  routes read it (the kernels that take the distance between images), so the route has
  nothing left to copy (densenet201's 98 routes). Nested routes nest their slices: a slice's
  place is inside its route's place.
- Layers that pass their input through (dropout, cost, a route of one layer) share their
  input's place; a convolution fused with the shortcut after it writes the shortcut's place.

Offsets count floats per image, so one plan serves every batch size: a buffer of C x H x W
floats per image at offset `o` is the batch's N x C x H x W floats from `o * N`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nets.layers import Convolutional, Cost, Dropout, Layer, MaxPool, Route, Shortcut

INPUT = -1  # the network's input, as a producer
ALIGN = 64  # floats: every buffer starts 256-byte aligned (for any batch size)


@dataclass(frozen=True)
class Place:
    """Where one output lives: in buffer `root` (a producer's index), from channel `first`."""

    root: int
    first: int
    channels: int  # this output's channels
    root_shape: tuple[int, int, int]  # the whole buffer's (C, H, W) per image


@dataclass(frozen=True)
class MemoryPlan:
    places: dict[int, Place]  # producer (layer index or INPUT) -> its place
    offsets: dict[int, int]  # buffer root -> offset in floats per image
    floats_per_image: int
    value_of: tuple[int, ...]  # layer index -> the producer whose output it returns
    copies_saved: int  # route inputs written straight into their slice


def passes_through(layer: Layer) -> bool:
    return isinstance(layer, (Dropout, Cost)) or (isinstance(layer, Route) and len(layer.layers) == 1)


def plan_memory(
    layers: tuple[Layer, ...], input_shape: tuple[int, int, int], fused: dict[int, Shortcut],
    route_slices: bool = True, shapes: dict[int, tuple[int, int, int]] | None = None,
) -> MemoryPlan:
    """The plan for these layers (shapes checked by build_network); `fused`: conv index -> the
    shortcut it runs with (nets.network.fusable_shortcuts). Without `route_slices`, no output
    lives in a slice of a route's (every route copies). `shapes`: outputs that take another
    (C, H, W) per image in the backend's memory than their layer's out_shape (the CPU's
    linked convolutions, which write a zero border for the next)."""
    planned = shapes or {}
    shapes = {INPUT: input_shape}
    value_of: list[int] = []  # layer -> producer of its output
    step_of: dict[int, int] = {INPUT: -1}  # producer -> the step that writes it
    readers: dict[int, list[Layer]] = {INPUT: []}
    last_read: dict[int, int] = {INPUT: -1}

    def read(producer: int, step: int, reader: Layer) -> None:
        readers[producer].append(reader)
        last_read[producer] = max(last_read[producer], step)

    def write(producer: int, step: int, shape: tuple[int, int, int]) -> None:
        shapes[producer], step_of[producer] = shape, step
        readers[producer], last_read[producer] = [], step

    for layer in layers:
        i = layer.index
        previous = value_of[i - 1] if i else INPUT
        if passes_through(layer):
            value_of.append(value_of[layer.layers[0]] if isinstance(layer, Route) else previous)
        elif i - 1 in fused:  # this shortcut was written by the convolution before it
            value_of.append(i)
        elif i in fused:  # the convolution writes the shortcut's output, reading its residual
            shortcut = fused[i]
            write(shortcut.index, i, shortcut.out_shape)
            read(previous, i, layer)
            read(value_of[shortcut.source], i, shortcut)
            value_of.append(shortcut.index)
        else:
            write(i, i, planned.get(i, layer.out_shape))
            read(previous, i, layer)
            for source in layer.sources():
                read(value_of[source], i, layer)
            value_of.append(i)
    last_read[value_of[-1]] = len(layers)  # the caller reads the network's output

    parent: dict[int, tuple[int, int]] = {}  # producer -> (route producer, first channel)
    for layer in layers:
        if route_slices and isinstance(layer, Route) and len(layer.layers) > 1:
            first = 0
            for source in layer.layers:
                producer = value_of[source]
                if producer not in parent and _slice_friendly(producer, layers, readers):
                    parent[producer] = (layer.index, first)
                first += shapes[producer][0]

    places: dict[int, Place] = {}
    for producer in shapes:
        root, first = producer, 0
        while root in parent:
            root, offset = parent[root]
            first += offset
        places[producer] = Place(root, first, shapes[producer][0], shapes[root])
    live: dict[int, tuple[int, int]] = {}
    for producer, place in places.items():
        start, end = live.get(place.root, (step_of[producer], last_read[producer]))
        live[place.root] = (min(start, step_of[producer]), max(end, last_read[producer]))
    offsets = _assign_offsets({r: _aligned(int(np.prod(shapes[r]))) for r in live}, live)
    total = max((offsets[r] + _aligned(int(np.prod(shapes[r]))) for r in live), default=0)
    return MemoryPlan(places, offsets, total, tuple(value_of), len(parent))


def _slice_friendly(producer: int, layers: tuple[Layer, ...], readers: dict[int, list[Layer]]) -> bool:
    """Can this output live in a channel slice (images not contiguous when the batch is > 1)?
    Its writer must be a convolution, a max pool or a route, and its readers convolutions or
    routes (a fused convolution reads its residual whole: that reader is the shortcut)."""
    if producer == INPUT or not isinstance(layers[producer], (Convolutional, MaxPool, Route)):
        return False
    return all(isinstance(reader, (Convolutional, Route)) for reader in readers[producer])


def _aligned(floats: int) -> int:
    return -(-floats // ALIGN) * ALIGN


def _assign_offsets(sizes: dict[int, int], live: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Biggest first, each at the lowest offset free of every buffer alive at the same time."""
    offsets: dict[int, int] = {}
    for root in sorted(sizes, key=lambda r: (-sizes[r], r)):
        start, end = live[root]
        busy = sorted(
            (offsets[other], offsets[other] + sizes[other])
            for other in offsets
            if live[other][0] <= end and start <= live[other][1]
        )
        offset = 0
        for low, high in busy:
            if offset + sizes[root] <= low:
                break
            offset = max(offset, high)
        offsets[root] = offset
    return offsets
