"""The training machinery around the kernels: Darknet's schedule, the CPU's train_batch against
the float64 reference's (1 and 5 steps), runs that repeat bit for bit, the augmentation and
the loader's data order, and the saved state."""

import math
import os
import sys
import threading

import numpy as np
import pytest

import nets
from kern.cpu import buffers
from kern.errors import KernError
from nets.augment import Augmentation, read_augmentation
from nets.cfg import parse_cfg
from nets.loader import Loader, TrainingSet, label_of
from nets.solver import Solver, read_solver
from nets.training import stream
from tests.test_training_ref import BODIES, HEAD


def write_cfg(tmp_path, body, **head):
    options = dict(batch=6, subdivisions=2, h=8, w=8) | head
    path = tmp_path / "net.cfg"
    path.write_text(HEAD.format(**options) + body)
    return path


# ---- the schedule: Darknet's get_current_rate, in its float32 and double arithmetic

def test_policies_follow_darknets_formulas():
    s = Solver(128, 1, 0.1, 0.9, 0.0005, "poly", max_batches=300, power=4)
    assert s.rate(1) == float(np.float32(0.1 * (1 - np.float32(1) / np.float32(300)) ** 4))
    assert s.rate(300) == 0.0
    s = Solver(64, 2, 0.1, 0.9, 0.0005, "steps", steps=(5, 10), scales=(0.1, 0.5), burn_in=3, power=2)
    burn = float(np.float32(1) / np.float32(3))  # burn_in: lr * ((float) k / burn_in)^power, in double
    assert s.rate(1) == float(np.float32(float(np.float32(0.1)) * burn**2))
    assert [round(s.rate(k), 6) for k in (3, 4, 5, 9, 10, 99)] == [0.1, 0.1, 0.01, 0.01, 0.005, 0.005]
    assert Solver(1, 1, 0.2, 0.9, 0, "step", step=10, scale=0.5).rate(25) == pytest.approx(0.05)
    assert Solver(1, 1, 0.2, 0.9, 0, "exp", gamma=0.9).rate(3) == pytest.approx(0.2 * 0.9**3)
    sig = Solver(1, 1, 0.2, 0.9, 0, "sig", gamma=0.5, step=10)
    assert sig.rate(9) == 0.0  # C's size_t subtraction wraps below `step`
    assert sig.rate(10) == pytest.approx(0.1) and sig.rate(12) == pytest.approx(0.2 / (1 + math.exp(1)))
    assert Solver(1, 1, 0.2, 0.9, 0, "random", power=1).rate(5, uniform=0.25) == pytest.approx(0.05)


def test_update_constants_are_float32_like_darknets():
    rate, decay = Solver(128, 4, 0.1, 0.9, 0.0005).update_constants(1, rate_scale=0.5)
    assert rate == float(np.float32(np.float32(0.1) * np.float32(0.5)) / np.float32(128))
    assert decay == float(np.float32(0.0005) * np.float32(128))


@pytest.mark.parametrize("text, expected", [
    ("batch=6\nsubdivisions=4\n", "batch=6 is not a multiple of subdivisions=4"),
    ("batch=4\npolicy=steps\nsteps=1,2\nscales=.1\n", "steps= has 2 values, scales= 1"),
    ("batch=4\npolicy=poly\n", "policy=poly needs max_batches="),
    ("batch=4\npolicy=cosine\n", "policy=cosine: expected one of"),
    ("batch=4\nrandom=1\n", "random=1 (multi-scale training) is not supported"),
    ("subdivisions=1\n", "needs batch="),
])
def test_bad_schedules_are_one_line(tmp_path, text, expected):
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n" + text + "[avgpool]\n[softmax]\n")
    with pytest.raises(KernError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_solver(parse_cfg(path)[0])


# ---- train_batch: the CPU against the float64 reference, and repeatability

@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("steps", [1, 5])
def test_cpu_train_batch_matches_the_float64_reference(tmp_path, rng, body, steps):
    cfg = write_cfg(tmp_path, BODIES[body])
    nets_ = [nets.load(cfg, training=True, backend=b, dtype=np.float64, seed=3) for b in ("ref", "cpu")]
    images = rng.random((steps, 6, 3, 8, 8), dtype=np.float32)
    labels = rng.integers(0, nets_[0].classes, (steps, 6))
    losses = [[net.train_batch(x, y) for x, y in zip(images, labels)] for net in nets_]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    for truth, fast in zip(*(net.values() for net in nets_)):
        for name in truth:
            scale = np.abs(truth[name]).max() + 1e-12
            assert np.abs(fast[name] - truth[name]).max() <= 1e-5 * scale, name


def test_runs_repeat_bit_for_bit_on_any_thread_count(tmp_path, rng):
    cfg = write_cfg(tmp_path, BODIES["connected_dropout"])
    images = rng.random((3, 6, 3, 8, 8), dtype=np.float32)
    labels = rng.integers(0, 5, (3, 6))
    results = []
    for threads in (1, 2, 2):
        net = nets.load(cfg, training=True, threads=threads, seed=9)
        losses = [net.train_batch(x, y) for x, y in zip(images, labels)]
        results.append((losses, net.values()))
    for losses, values in results[1:]:
        assert losses == results[0][0]
        for a, b in zip(values, results[0][1]):
            assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("body", sorted(BODIES))
def test_cpu_passes_reuse_their_arrays_and_never_read_what_a_pass_left(tmp_path, rng, monkeypatch, body):
    """After the first batch a CPU step allocates no array of 4-byte items (PassBuffers lends
    the last pass's again), and no op reads what the last pass left in them: with every
    given-back array filled with NaN (int32 -4194304) the run is the same bit for bit."""
    cfg = write_cfg(tmp_path, BODIES[body])
    images = rng.random((3, 6, 3, 8, 8), dtype=np.float32)
    plain = nets.load(cfg, training=True, seed=2)
    labels = rng.integers(0, plain.classes, (3, 6))
    expected = [plain.train_batch(x, y) for x, y in zip(images, labels)]

    new_arrays = []
    real_new_array, real_new_pass = buffers.new_array, buffers.PassBuffers.new_pass

    def counted(shape, dtype=np.float32):
        new_arrays.append(np.dtype(dtype).itemsize)
        return real_new_array(shape, dtype)

    def poisoned(self):
        real_new_pass(self)
        for flats in self._free.values():
            for flat in flats:
                flat.fill(np.nan)

    monkeypatch.setattr(buffers, "new_array", counted)
    monkeypatch.setattr(buffers.PassBuffers, "new_pass", poisoned)
    net = nets.load(cfg, training=True, seed=2)
    losses = [net.train_batch(images[0], labels[0])]
    new_arrays.clear()
    losses += [net.train_batch(x, y) for x, y in zip(images[1:], labels[1:])]
    assert 4 not in new_arrays
    assert losses == expected
    for a, b in zip(net.values(), plain.values()):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_pass_buffers_lend_aligned_views_and_lend_them_again():
    lent = buffers.PassBuffers()
    a, b = lent.empty((3, 5)), lent.empty((15,), np.int32)
    assert a.shape == (3, 5) and a.dtype == np.float32 and b.dtype == np.int32
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous
    assert not np.shares_memory(a, b)  # both lent in one pass: two arrays
    lent.new_pass()
    c, d = lent.empty((5, 3), np.int32), lent.empty((15,))
    assert {c.ctypes.data, d.ctypes.data} == {a.ctypes.data, b.ctypes.data}
    assert lent.empty((2,), np.float64).dtype == np.float64  # other item sizes: new each time


def test_state_restores_momentum_and_refuses_another_checkpoint(tmp_path, rng):
    cfg = write_cfg(tmp_path, BODIES["conv_bn_groups_stride"])
    net = nets.load(cfg, training=True, seed=4)
    images, labels = rng.random((6, 3, 8, 8), dtype=np.float32), rng.integers(0, 4, 6)
    net.train_batch(images, labels)
    net.save_weights(tmp_path / "a.weights")
    net.save_state(tmp_path / "a.state")
    again = nets.load(cfg, tmp_path / "a.weights", training=True, seed=99)
    assert again.seen == 6 and again.load_state(tmp_path / "a.state")["seen"] == 6 and again.seed == 4
    for a, b in zip(net.layers, again.layers):
        assert all(np.array_equal(a.updates[k], b.updates[k]) for k in a.updates)
    net.train_batch(images, labels)  # now at 12 images
    net.save_weights(tmp_path / "b.weights")
    stale = nets.load(cfg, tmp_path / "b.weights", training=True)
    with pytest.raises(KernError, match="saved at 6 images seen, the weights at 12"):
        stale.load_state(tmp_path / "a.state")
    other = nets.load(write_cfg(tmp_path, BODIES["maxpool_route_shortcut"]), training=True)
    with pytest.raises(KernError, match="another network"):
        other.load_state(tmp_path / "a.state")


def test_train_batch_refuses_wrong_shapes_and_labels(tmp_path):
    net = nets.load(write_cfg(tmp_path, BODIES["maxpool_route_shortcut"]), training=True)
    with pytest.raises(KernError, match=r"expected images of shape \(6, 3, 8, 8\)"):
        net.train_batch(np.zeros((5, 3, 8, 8), np.float32), np.zeros(5, int))
    with pytest.raises(KernError, match="class indices 0..2"):
        net.train_batch(np.zeros((6, 3, 8, 8), np.float32), np.full(6, 3))


def test_cost_type_and_a_loss_in_the_middle_are_refused(tmp_path):
    body = BODIES["shortcut_across_scales"] + "[cost]\ntype=L1\n"
    with pytest.raises(KernError, match="sum of squares"):
        nets.load(write_cfg(tmp_path, body), training=True)
    with pytest.raises(KernError, match="expected the network to end in"):
        nets.load(write_cfg(tmp_path, BODIES["shortcut_across_scales"].replace("[softmax]\n", "")), training=True)


# ---- augmentation and the loader

def test_augmentation_without_jitter_is_the_centre_crop(rng):
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    aug = Augmentation(28, 28, 32, 32)
    draw = aug.draws(rng, 1)[0]
    draw[3:6] = 0  # no offset, no flip
    out = np.full((3, 28, 28), np.nan, np.float32)
    aug.apply(image, draw, out)
    np.testing.assert_allclose(out, image[2:30, 2:30].transpose(2, 0, 1) / 255, atol=1e-6)
    draw[5] = 1  # the mirror
    aug.apply(image, draw, out)
    np.testing.assert_allclose(out, image[2:30, 2:30][:, ::-1].transpose(2, 0, 1) / 255, atol=1e-6)


def _rotate_crop(image, angle, scale, aspect, dx, dy, width, height):
    """Darknet's rotate_crop_image, a plain per-pixel float64 reading of it: bilinear, zeros
    outside the image."""
    in_h, in_w, _ = image.shape
    values = image.astype(np.float64) / 255

    def pixel(x, y):
        return values[y, x] if 0 <= x < in_w and 0 <= y < in_h else np.zeros(3)

    out = np.empty((3, height, width))
    for y in range(height):
        for x in range(width):
            u = (x - width / 2 + dx) / scale * aspect
            v = (y - height / 2 + dy) / scale
            rx = np.cos(angle) * u - np.sin(angle) * v + in_w / 2
            ry = np.sin(angle) * u + np.cos(angle) * v + in_h / 2
            ix, iy = int(np.floor(rx)), int(np.floor(ry))
            fx, fy = rx - ix, ry - iy
            out[:, y, x] = ((1 - fy) * (1 - fx) * pixel(ix, iy) + fy * (1 - fx) * pixel(ix, iy + 1)
                            + (1 - fy) * fx * pixel(ix + 1, iy) + fy * fx * pixel(ix + 1, iy + 1))
    return out


def test_rotated_scaled_crops_match_a_plain_reading_edges_included(rng):
    """Crops that turn, stretch and hang over every edge of an odd-sized image (the kernel
    reads interior pixels without bounds checks: a wrong test for the edge shows here)."""
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    aug = Augmentation(11, 9, 8, 30, angle=40, aspect=1.4)
    draws = aug.draws(rng, 40)
    draws[:, 6:] = [0, 1, 1]  # no colour jitter: the crop alone
    for draw in draws:
        draw[5] = 0
        out = np.full((3, 9, 11), np.nan, np.float32)
        aug.apply(image, draw, out)
        aspect, side, angle, ox, oy = draw[:5]
        scale = float(np.float32(side) / np.float32(int(min(13.0, 17 * aspect))))
        dx, dy = ox * abs(17 * scale / aspect - 11) / 2, oy * abs(13 * scale - 9) / 2
        expected = _rotate_crop(image, angle, scale, aspect, dx, dy, 11, 9)
        np.testing.assert_allclose(out, expected, atol=3e-5)


def test_a_batch_in_parallel_is_each_image_alone(rng):
    """apply_many (the trainer's share of a batch, on Numba's threads) gives apply's bits for
    every image, images of different sizes and a crop hanging over the edges included."""
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((13, 17), (9, 9), (20, 11), (13, 17))]
    aug = Augmentation(11, 9, 8, 30, angle=40, aspect=1.4, hue=0.2, saturation=1.5, exposure=1.5)
    draws = aug.draws(rng, len(images))
    together = np.full((len(images), 3, 9, 11), np.nan, np.float32)
    aug.apply_many(images, draws, together)
    for image, draw, got in zip(images, draws, together):
        alone = np.full((3, 9, 11), np.nan, np.float32)
        aug.apply(image, draw, alone)
        np.testing.assert_array_equal(got, alone)


def test_hsv_jitter_round_trips_and_stays_in_range(rng):
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    aug = Augmentation(16, 16, 16, 16, hue=0.3, saturation=1.5, exposure=1.5)
    draws = aug.draws(rng, 50)
    out = np.empty((3, 16, 16), np.float32)
    for draw in draws:
        aug.apply(image, draw, out)
        assert 0 <= out.min() and out.max() <= 1
    plain = draws[0].copy()
    plain[3:] = [0, 0, 0, 0, 1, 1]  # hue 0, saturation and exposure 1: RGB -> HSV -> RGB
    aug.apply(image, plain, out)
    np.testing.assert_allclose(out, image.transpose(2, 0, 1) / 255, atol=2e-6)


def test_read_augmentation_uses_darknets_defaults(tmp_path):
    path = tmp_path / "a.cfg"
    path.write_text("[net]\nbatch=1\nwidth=28\nheight=28\nchannels=3\nmin_crop=32\nmax_crop=32\n")
    aug = read_augmentation(parse_cfg(path)[0], 28, 28)
    assert (aug.min_crop, aug.max_crop, aug.hue, aug.saturation) == (32, 32, 0.0, 1.0)
    path.write_text("[net]\nbatch=1\nwidth=224\nheight=224\nchannels=3\n")
    assert read_augmentation(parse_cfg(path)[0], 224, 224).max_crop == 448  # max_crop = 2 * width


def test_labels_by_darknets_rule():
    labels = ["cat", "dog", "ship"]
    assert label_of("data/12_dog.png", labels, "list:1") == 1
    with pytest.raises(KernError, match="holds none of the 3 labels"):
        label_of("data/12_cow.png", labels, "list:1")
    with pytest.raises(KernError, match="holds the labels 'cat' and 'dog'"):
        label_of("cat/12_dog.png", labels, "list:7")


def test_loader_epochs_are_permutations_and_batches_depend_on_seed_and_number():
    dataset = TrainingSet("x.data", [f"{i}_cat" for i in range(10)], np.zeros(10, int), ["cat"], "backup")
    loader = Loader(dataset, Augmentation(4, 4, 4, 4), 4, seed=5, stream=stream)
    positions = np.concatenate([loader.indices(k) for k in (1, 2, 3, 4, 5)])  # 20 = two epochs
    assert sorted(positions[:10]) == list(range(10)) and sorted(positions[10:]) == list(range(10))
    assert np.array_equal(Loader(dataset, Augmentation(4, 4, 4, 4), 4, 5, stream).indices(4), loader.indices(4))
    assert not np.array_equal(Loader(dataset, Augmentation(4, 4, 4, 4), 4, 6, stream).indices(1), loader.indices(1))


def test_loader_batches_are_the_same_whoever_prepares_them(tmp_path, rng):
    """Batch 3 got after 1 and 2 (prepared by the loader thread while 2 was used) is the
    batch a fresh loader makes for it at once; an image of the wrong size fails get() with its
    one line, whichever thread met it."""
    from PIL import Image

    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"{i}_cat.png"))
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(paths[-1])
    dataset = TrainingSet("x.data", paths, np.zeros(10, int), ["cat"], "backup")
    aug = Augmentation(6, 6, 8, 8, angle=10, hue=0.1, saturation=1.5, exposure=1.5)
    first, fresh = (Loader(dataset, aug, 4, seed=3, stream=stream) for _ in range(2))
    try:
        for number in (1, 2):
            first.get(number)
        images, classes = first.get(3)
        alone, alone_classes = fresh.get(3)
        assert np.array_equal(images, alone) and np.array_equal(classes, alone_classes)
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(paths[0])
        bad = Loader(dataset, aug, 10, seed=3, stream=stream)  # every batch holds image 0
        with pytest.raises(KernError, match="expected images whose shorter side is 8"):
            bad.get(1)
        with pytest.raises(KernError, match="expected images whose shorter side is 8"):
            bad.get(2)  # begun by the loader thread
        bad.close()
    finally:
        first.close()
        fresh.close()


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_the_loader_thread_yields_to_the_kernels():
    """The loader thread runs at nice 19, the process (the kernels' threads) as it was."""
    dataset = TrainingSet("x.data", ["0_cat"], np.zeros(1, int), ["cat"], "backup")
    loader = Loader(dataset, Augmentation(4, 4, 4, 4), 1, seed=0, stream=stream)
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        nice = loader._pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    finally:
        loader.close()
    assert nice == 19 and os.getpriority(os.PRIO_PROCESS, 0) == own_nice < 19
