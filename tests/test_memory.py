"""Planned activation memory (nets/memory.py): checked by running each plan, step by step, on
a model of the arena, for all 18 cfgs; then the CUDA backend on cudasim with planned memory and
CUDA graphs: the same outputs as the CPU, nothing allocated or copied by routes, and a
replayed graph bit for bit equal to the pass it recorded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import nets
from nets.layers import Cost, Dropout, Route
from nets.memory import INPUT, MemoryPlan, plan_memory
from nets.network import Network, fusable_shortcuts
from nets.weights import random_weights
from tests.conftest import assert_close

REPO = Path(__file__).resolve().parent.parent
CFGS = sorted((REPO / "cfg").glob("*.cfg"))


def plan_of(spec) -> tuple[MemoryPlan, dict]:
    fused = fusable_shortcuts(spec.layers, spec.kept)
    return plan_memory(spec.layers, spec.input_shape, fused), fused


def check_plan(layers, input_shape, plan: MemoryPlan, fused: dict, planned_shapes: dict | None = None) -> None:
    """Run the network on a model of the arena (one image): each float holds a tag saying
    whose data it is. A layer writes its tag over its place (a route: its inputs' contents
    over theirs); every read must find exactly the contents it expects, also after the
    reading layer's own write. planned_shapes: outputs the backend writes in another shape
    (plan_memory's `shapes`)."""
    arena = np.full(plan.floats_per_image, -2, np.int64)  # -2: nobody's

    def value(i: int) -> int:  # who made what layer i returns (independent of the plan)
        layer = layers[i]
        if isinstance(layer, (Dropout, Cost)):
            return value(i - 1) if i else INPUT
        if isinstance(layer, Route) and len(layer.layers) == 1:
            return value(layer.layers[0])
        return i + 1 if i in fused else i

    shapes = {INPUT: input_shape, **{layer.index: layer.out_shape for layer in layers}, **(planned_shapes or {})}

    def region(producer: int) -> slice:
        place = plan.places[producer]
        _, h, w = shapes[producer]
        assert shapes[producer] == (place.channels, *place.root_shape[1:])
        start = plan.offsets[place.root] + place.first * h * w
        assert 0 <= start and start + place.channels * h * w <= plan.floats_per_image
        return slice(start, start + place.channels * h * w)

    def contents(producer: int) -> np.ndarray:
        layer = layers[producer] if producer != INPUT else None
        if isinstance(layer, Route):
            return np.concatenate([contents(value(i)) for i in layer.layers])
        _, h, w = shapes[producer]
        return np.full(shapes[producer][0] * h * w, producer)

    def read(producer: int, reader: int) -> None:
        found = arena[region(producer)]
        assert np.array_equal(found, contents(producer)), (
            f"layer {reader} reads the output of {producer}, overwritten by "
            f"{sorted(set(found[found != contents(producer)]))}"
        )

    arena[region(INPUT)] = contents(INPUT)
    for layer in layers:
        i = layer.index
        if isinstance(layer, (Dropout, Cost)) or (isinstance(layer, Route) and len(layer.layers) == 1):
            continue
        if i - 1 in fused:
            continue
        reads = [value(i - 1) if i else INPUT, *map(value, layer.sources())]
        if i in fused:
            reads.append(value(fused[i].source))
        for producer in reads:
            read(producer, i)
        arena[region(value(i))] = contents(value(i))
        for producer in reads:  # a kernel reads its inputs while it writes: no overlap
            read(producer, i)
    read(value(len(layers) - 1), len(layers))


@pytest.mark.parametrize("cfg", CFGS, ids=lambda p: p.stem)
def test_plan_never_overwrites_what_is_still_read(cfg):
    spec = nets.load_spec(cfg)
    plan, fused = plan_of(spec)
    check_plan(spec.layers, spec.input_shape, plan, fused)
    whole = sum(int(np.prod(layer.out_shape)) for layer in spec.layers) + int(np.prod(spec.input_shape))
    assert plan.floats_per_image < whole  # outputs share memory


@pytest.mark.parametrize("name", ["tiny", "darknet19", "darknet53", "densenet201", "resnet50", "resnext50"])
def test_cpu_plan_with_linked_layouts_never_overwrites_what_is_still_read(name, cpu):
    """The CPU's plan: no route slices (every route copies) and linked convolutions' outputs
    in the shape they are written (with the next one's zero border)."""
    spec = nets.load_spec(REPO / "cfg" / f"{name}.cfg")
    net = Network(spec, random_weights(spec.layers, seed=0), cpu)
    plan = net.memory
    assert plan is not None and plan.copies_saved == 0
    assert all(place.root == producer for producer, place in plan.places.items())
    shapes = net._planned_shapes()
    assert any(shapes[i] != spec.layers[i].out_shape for i in shapes)  # some write a border
    check_plan(spec.layers, spec.input_shape, plan, net.fused, shapes)


def test_the_checker_catches_a_bad_plan():
    spec = nets.load_spec(REPO / "cfg" / "darknet19.cfg")
    plan, fused = plan_of(spec)
    roots = sorted(plan.offsets)
    # Every buffer at offset 0: a layer's output overwrites its own input.
    overlapped = dataclasses.replace(plan, offsets={root: 0 for root in roots})
    with pytest.raises(AssertionError, match="overwritten by"):
        check_plan(spec.layers, spec.input_shape, overlapped, fused)


def test_densenet201_routes_copy_nothing():
    spec = nets.load_spec(REPO / "cfg" / "densenet201.cfg")
    plan, _ = plan_of(spec)
    routes = [layer for layer in spec.layers if isinstance(layer, Route) and len(layer.layers) > 1]
    assert len(routes) == 98
    assert plan.copies_saved == sum(len(route.layers) for route in routes)


DENSE = """[net]
channels=3
height={size}
width={size}

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky
{blocks}
[convolutional]
filters=20
size=1
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=20
size=3
stride=1
pad=1
activation=linear

[shortcut]
from=-2
activation=leaky

[avgpool]

[connected]
output=10
activation=linear

[softmax]
"""
DENSE_BLOCK = """
[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1,-3
"""


def small_densenet(tmp_path, size: int = 12, blocks: int = 3):
    """densenet201's dense block (three times), a transition, a fused residual and the head."""
    path = tmp_path / "dense.cfg"
    path.write_text(DENSE.format(size=size, blocks="".join([DENSE_BLOCK] * blocks)))
    return nets.load_spec(path)


def count_launches(monkeypatch) -> dict[str, int]:
    from kern.cudasim import device

    counts: dict[str, int] = {}
    run = device.Function._run

    def counted(self, *args, **kwargs):
        counts[self.kernel.name] = counts.get(self.kernel.name, 0) + 1
        return run(self, *args, **kwargs)

    monkeypatch.setattr(device.Function, "_run", counted)
    return counts


def test_planned_network_on_cudasim_matches_cpu_and_routes_copy_nothing(cudasim, cpu, tmp_path, monkeypatch):
    spec = small_densenet(tmp_path)
    values = random_weights(spec.layers, seed=7)
    images = np.random.default_rng(8).random((2, *spec.input_shape), dtype=np.float32)
    net = Network(spec, values, cudasim)
    assert net.memory.copies_saved == 6 and 12 in net.fused  # the conv before the shortcut
    launches = count_launches(monkeypatch)
    first = net.forward(images)
    assert_close(first, Network(spec, values, cpu).forward(images), 1e-4)
    assert "copy_channels" not in launches
    assert launches["conv2d_implicit_gemm_splitk"] > 0


def test_graph_replay_equals_the_pass_it_recorded_and_allocates_nothing(cudasim, tmp_path, monkeypatch):
    spec = small_densenet(tmp_path)
    values = random_weights(spec.layers, seed=9)
    rng = np.random.default_rng(10)
    images = [rng.random((2, *spec.input_shape), dtype=np.float32) for _ in range(2)]
    net = Network(spec, values, cudasim)
    direct = count_launches(monkeypatch)
    uncaptured = [net.forward(images[0])]  # the first pass runs, and is recorded (not run)
    monkeypatch.undo()
    assert net._placed[2].replay is not None
    uncaptured.append(net.forward(images[1]))  # replayed
    from kern.cudasim import device

    allocations = []
    monkeypatch.setattr(device, "Allocation", lambda nbytes: allocations.append(nbytes))
    replays = count_launches(monkeypatch)
    replayed = [net.forward(x) for x in reversed(images)][::-1]
    assert allocations == [] and replays == {k: 2 * v for k, v in direct.items()}
    for a, b in zip(replayed, uncaptured):
        assert np.array_equal(a, b)
    monkeypatch.undo()
    without = Network(spec, values, type(cudasim)(graphs=False))
    for x, expected in zip(images, uncaptured):
        assert np.array_equal(without.forward(x), expected)


@pytest.mark.parametrize("on", ["cudasim", "cpu"])
def test_batch_sizes_share_one_arena_sized_for_the_largest(on, request, ref64, tmp_path):
    """Batch sizes 1, 3, 1, 2, 5, 2: each pass right; one arena at any time, replaced only by
    a larger batch (then the views of the old one go), and used from its start by smaller."""
    backend = request.getfixturevalue(on)
    spec = small_densenet(tmp_path, size=9, blocks=1)
    values = random_weights(spec.layers, seed=11)
    net, truth = Network(spec, values, backend), Network(spec, values, ref64)
    arenas = []
    for batch in (1, 3, 1, 2, 5, 2):
        images = np.random.default_rng(batch).random((batch, *spec.input_shape), dtype=np.float32)
        assert_close(net.forward(images), truth.forward(images), 1e-4)
        arena = net._placed[batch].arena
        assert all(placed.arena is arena for placed in net._placed.values())
        arenas.append(arena.size // net.memory.floats_per_image)
    assert arenas == [1, 3, 3, 3, 5, 5] and sorted(net._placed) == [2, 5]


@pytest.mark.parametrize("on", ["cudasim", "cpu"])
def test_a_result_is_the_callers_and_the_next_pass_leaves_it(on, request, tmp_path):
    """forward() returns a copy, not the arena's place (that the next pass writes again):
    the CPU once returned (N, 1, 1, C) outputs as views, and a later batch changed them."""
    backend = request.getfixturevalue(on)
    spec = small_densenet(tmp_path, size=9, blocks=1)
    net = Network(spec, random_weights(spec.layers, seed=12), backend)
    rng = np.random.default_rng(13)
    first = net.predict(rng.random((3, *spec.input_shape), dtype=np.float32))
    kept = first.copy()
    net.predict(rng.random((1, *spec.input_shape), dtype=np.float32))
    net.predict(rng.random((3, *spec.input_shape), dtype=np.float32))
    assert np.array_equal(first, kept)


@pytest.mark.parametrize("filters,shape", [(40, (2, 16, 13, 11)), (72, (2, 25, 13, 12)), (45, (2, 30, 3, 4)), (5, (2, 4, 6, 7))],
                         ids=["gemm", "gemm 128", "split-K", "direct"])
def test_conv_reads_and_writes_channel_slices(cudasim, ref64, rng, filters, shape):
    from tests.test_cudasim_catches import conv_into_slices

    got, expected = conv_into_slices(cudasim, ref64, rng, filters, shape)
    assert_close(got, expected)


def test_a_failed_capture_falls_back_to_launch_by_launch(cudasim, tmp_path, monkeypatch):
    from kern.cudasim import device

    def refuse(stream):
        raise device._Runtime.CUDARuntimeError("cudaErrorStreamCaptureUnsupported")

    spec = small_densenet(tmp_path, size=9, blocks=1)
    net = Network(spec, random_weights(spec.layers, seed=2), cudasim)
    images = np.random.default_rng(3).random((1, *spec.input_shape), dtype=np.float32)
    monkeypatch.setattr(device.Stream, "begin_capture", refuse)
    with pytest.warns(UserWarning, match="capture failed .*cudaErrorStreamCaptureUnsupported"):
        first = net.forward(images)
    assert np.array_equal(net.forward(images), first)


@pytest.mark.parametrize("name", ["tiny", "resnext50"])
def test_cpu_pass_writes_its_outputs_into_the_arena(name, cpu, ref64, monkeypatch):
    """From the first pass at a batch size on, every output of a CPU pass goes to its planned
    place: no op allocates one (resnext50: linked lane layouts, Winograd, grouped layers);
    the result matches the float64 reference and run() returns a view into the arena."""
    from kern.cpu import simd

    spec = nets.load_spec(REPO / "cfg" / f"{name}.cfg")
    weights = random_weights(spec.layers, seed=3)
    net = Network(spec, weights, cpu)
    images = np.random.default_rng(4).random((2, *spec.input_shape), dtype=np.float32)
    first = net.forward(images)
    allocated = []
    real = simd.aligned_empty
    monkeypatch.setattr(simd, "aligned_empty", lambda size: allocated.append(size) or real(size))
    again = net.forward(images)
    assert allocated == [] and np.array_equal(first, again)
    assert_close(again, Network(spec, weights, ref64).forward(images), 1e-4)
    arena = net._placed_at(2).arena
    assert np.shares_memory(net.run(cpu.asarray(images)), arena)
    monkeypatch.setattr(simd, "aligned_empty", real)
    unplanned = Network(spec, weights, cpu)
    unplanned.memory = None  # the same layers, each output a new array: the count is not empty
    monkeypatch.setattr(simd, "aligned_empty", lambda size: allocated.append(size) or real(size))
    unplanned.forward(images)
    assert len(allocated) > 0
