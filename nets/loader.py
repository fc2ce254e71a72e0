"""Training images, Darknet's way (`classifier train`): the `.data` file's `train=` list, each
image's class the label of `labels=` that occurs in its path, every image augmented afresh
(nets/augment.py).

Order: each epoch is a permutation of the list, seeded by (seed, epoch); batch k takes the
images at positions (k - 1) * batch .. k * batch - 1 of the epochs laid end to end. So batch k
depends on nothing but the seed and k (a resumed run loads what the straight run loaded), and
every image comes once per epoch (Darknet draws with replacement, rand() % N).
Decoded images (uint8) are cached, up to CACHE_BYTES; the next batch is prepared in a thread
while the current one trains (the augmentation kernel runs without the GIL), and what it has
not done when the trainer asks for the batch, the trainer augments on Numba's threads.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kern.errors import KernError
from nets.augment import Augmentation
from nets.data import read_data_file, read_lines, resolve
from nets.files import quote
from nets.image import decode_rgb8

CACHE_BYTES = 2 << 30  # decoded images kept in memory (CIFAR's 50,000 take 150 MB)
STREAM_ORDER, STREAM_AUGMENT = 4, 5  # nets.training.stream purposes


@dataclass(frozen=True)
class TrainingSet:
    """The images a .data file lists and their classes."""

    data_file: str
    paths: list[str]
    classes: np.ndarray  # one class index per path
    labels: list[str]
    backup: str


def label_of(path: str, labels: list[str], where: str) -> int:
    """Darknet's rule: the one label that occurs in the path; one line for none or several."""
    found = [i for i, label in enumerate(labels) if label and label in path]
    if not found:
        raise KernError(f"{where}: {quote(path)} holds none of the {len(labels)} labels: cannot tell its class")
    if len(found) > 1:
        both = " and ".join(quote(labels[i]) for i in found[:2])
        raise KernError(f"{where}: {quote(path)} holds the labels {both}: expected exactly one class per image")
    return found[0]


def read_training_set(data_file: str | Path, classes: int) -> TrainingSet:
    """The train= list of a .data file, its labels= and backup=, checked against a network
    with `classes` outputs."""
    options = read_data_file(data_file)
    if not options.get("train"):
        raise KernError(f"{data_file}: expected a train= line naming the list of training images")
    if not options.get("labels"):
        raise KernError(f"{data_file}: expected a labels= line naming the list of class labels")
    if "classes" in options and options["classes"].strip() != str(classes):
        raise KernError(f"{data_file}: classes={options['classes']}, but the network has {classes} outputs")
    labels_path = resolve(options["labels"])
    labels = [label for label in read_lines(labels_path, "labels list") if label]
    if len(labels) < classes:
        raise KernError(f"{labels_path}: {len(labels)} labels, the network has {classes} outputs")
    labels = labels[:classes]
    list_path = resolve(options["train"])
    lines = read_lines(list_path, "image list")
    paths, found = [], []
    for number, line in enumerate(lines, start=1):
        if line:
            paths.append(line)
            found.append(label_of(line, labels, f"{list_path}:{number}"))
    if not paths:
        raise KernError(f"{list_path}: the list of training images is empty")
    return TrainingSet(str(data_file), paths, np.array(found), labels, options.get("backup", "backup"))


def _yield_to_kernels() -> None:
    """The loader thread runs at the lowest priority (nice 19; on Linux a thread's own, not
    the process's). The kernels' threads fill the cores, and each parallel region waits for
    its slowest thread: a loader at their priority took a core from one of them while it
    augmented (8 ms of a 60 ms cifar_small step). At nice 19 it runs where a core is idle,
    between regions or while the step waits for its batch. `nets.train` cifar_small, 150
    batches, 2 threads, AMD EPYC Zen 3 (loaded), faster in 5 of 5 interleaved rounds, by
    1-14%: 1,430-1,882 images/s against 1,364-1,727."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class _BatchJob:
    """One batch's images, each augmented by whoever claims it: the loader thread one by one
    ahead of time, the trainer all it has not begun once the trainer needs the batch. The
    loader thread runs at nice 19 beside kernels that fill the cores, so it gets little done
    while a step runs: the trainer waited 2.3 ms per cifar_small batch (median; 128 images,
    2 threads, AMD EPYC Zen 4) for it to augment them alone."""

    def __init__(self, indices: np.ndarray, draws: np.ndarray, shape: tuple[int, ...]) -> None:
        self.indices = indices
        self.draws = draws
        self.images = np.empty((len(indices), *shape), dtype=np.float32)
        self._claimed = 0  # images 0 .. _claimed - 1 are taken, in order
        self._finished = 0
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def claim(self, count: int = 1) -> range:
        """Up to `count` images no one has taken (none once one failed)."""
        with self._changed:
            first = self._claimed
            if self._error is None:
                self._claimed = min(len(self.indices), first + count)
            return range(first, self._claimed)

    def finished(self, count: int, error: BaseException | None = None) -> None:
        with self._changed:
            self._finished += count
            self._error = self._error or error
            self._changed.notify_all()

    def wait(self) -> np.ndarray:
        """The images, once every claimed one is done; the first error raised here."""
        with self._changed:
            self._changed.wait_for(lambda: self._finished == self._claimed)
        if self._error is not None:
            raise self._error
        return self.images


class Loader:
    """Batches of augmented images: get(k) -> (images (batch, 3, H, W) float32, classes)."""

    def __init__(
        self, dataset: TrainingSet, augmentation: Augmentation, batch: int, seed: int,
        stream: Callable[..., np.random.Generator],
    ) -> None:
        self.dataset = dataset
        self.augmentation = augmentation
        self.batch_size = batch
        self.seed = seed
        self.stream = stream
        self._orders: dict[int, np.ndarray] = {}
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self._cache_lock = threading.Lock()  # the loader thread and the trainer both decode
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="kern-loader", initializer=_yield_to_kernels
        )
        self._next: tuple[int, _BatchJob] | None = None

    def indices(self, number: int) -> np.ndarray:
        """The list positions of batch `number` (1, 2, ...)."""
        size = len(self.dataset.paths)
        positions = np.arange((number - 1) * self.batch_size, number * self.batch_size)
        epochs = positions // size
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            if epoch not in self._orders:
                self._orders = {epoch: self.stream(self.seed, STREAM_ORDER, int(epoch)).permutation(size)}
            mask = epochs == epoch
            out[mask] = self._orders[epoch][positions[mask] % size]
        return out

    def get(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `number`: what the loader thread has done of it, the rest augmented here;
        then the loader thread starts on number + 1."""
        if self._next is not None and self._next[0] == number:
            job = self._next[1]
        else:
            job = self._job(number)
        rest = job.claim(len(job.indices))
        try:
            if len(rest):
                images = [self._image(int(job.indices[i])) for i in rest]
                part = slice(rest.start, rest.stop)  # a run of whole images: contiguous
                self.augmentation.apply_many(images, job.draws[part], job.images[part])
        except BaseException as error:
            job.finished(len(rest), error)
        else:
            job.finished(len(rest))
        images = job.wait()
        self._next = (number + 1, self._job(number + 1))
        self._pool.submit(self._work, self._next[1])
        return images, self.dataset.classes[job.indices]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _job(self, number: int) -> _BatchJob:
        """Batch `number`'s images and draws (made in the trainer's thread: the epoch orders and
        the streams are not shared)."""
        indices = self.indices(number)
        aug = self.augmentation
        draws = aug.draws(self.stream(self.seed, STREAM_AUGMENT, number), len(indices))
        return _BatchJob(indices, draws, (3, aug.height, aug.width))

    def _work(self, job: _BatchJob) -> None:
        """The loader thread: augment the job's images one at a time until none is left."""
        while len(taken := job.claim()):
            i = taken.start
            try:
                self.augmentation.apply(self._image(int(job.indices[i])), job.draws[i], job.images[i])
            except BaseException as error:  # raised by job.wait, in the trainer's thread
                job.finished(1, error)
            else:
                job.finished(1)

    def _image(self, index: int) -> np.ndarray:
        with self._cache_lock:
            image = self._cache.get(index)
        if image is None:
            path = self.dataset.paths[index]
            image = decode_rgb8(resolve(path))
            self._check_size(path, image)
            with self._cache_lock:
                if index not in self._cache and self._cached_bytes + image.nbytes <= CACHE_BYTES:
                    self._cache[index] = image
                    self._cached_bytes += image.nbytes
        return image

    def _check_size(self, path: str, image: np.ndarray) -> None:
        """A cfg with one crop size (min_crop = max_crop) expects images of that size: say so
        rather than train on images rescaled by another factor than it states."""
        aug = self.augmentation
        height, width = image.shape[:2]
        if aug.min_crop == aug.max_crop and not aug.center and min(height, width) != aug.min_crop:
            raise KernError(
                f"{path}: {width} x {height} pixels, but the cfg crops at {aug.min_crop} "
                f"(min_crop = max_crop): expected images whose shorter side is {aug.min_crop}"
            )
