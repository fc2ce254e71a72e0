"""`nets.valid --engine ray`: classify a source's images on Ray (Ray Data's actor pools), on
this machine or a cluster, and give back exactly what the local engine gives, image by image.

The driver sends (index, path) rows, not decoded images; each actor loads the network once
(warmed up: a fresh node compiles kern's kernels, or loads them from Numba's cache), decodes
its images and returns per image the top-k or an error (an unreadable image is a row, never a
failed run). Ray Data restarts a killed actor and runs its batch again; results are kept by
index, so each image is given once, in the source's order. Ray is imported only here.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kern.errors import KernError

COMPILE_NOTICE = "starting the actors: each loads the network; a fresh node compiles kern's kernels (10-40 s)"


@dataclass(frozen=True)
class Job:
    """What every actor needs to classify images as the local engine does."""

    cfg: str
    weights: str | None
    random_seed: int | None
    backend: str
    threads: int
    preprocess: str
    crops: int
    top: int


@dataclass(frozen=True)
class Cluster:
    """Where and how wide: address None (and no RAY_ADDRESS) starts an embedded local cluster."""

    address: str | None
    actors: tuple[int, int]  # (min, max): equal for a fixed pool
    gpus_per_actor: float


@dataclass(frozen=True)
class Result:
    index: int
    ranked: list[tuple[int, float]] | None  # None: the image could not be read
    error: str | None


def parse_actors(text: str) -> tuple[int, int]:
    """--actors N or MIN,MAX."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2 or not 1 <= numbers[0] <= numbers[1] <= 4096:
        raise KernError(f"--actors {text}: expected N or MIN,MAX (1 <= MIN <= MAX)")
    return numbers[0], numbers[1]


class Classifier:
    """A Ray Data actor: one loaded network; a batch of (index, path) rows in, per row the
    top-k classes and probabilities or an error out."""

    job: Job  # set on a subclass per run (classify)

    def __init__(self) -> None:
        import nets
        from nets.cli import WARMED_UP

        job = self.job
        self.net = nets.load(
            job.cfg, job.weights, random_seed=job.random_seed, backend=job.backend, threads=job.threads
        )
        if job.backend in WARMED_UP:
            self.net.warm_up()

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from nets.valid import prepare, rank

        job, (_, height, width) = self.job, self.net.input_shape
        count = len(rows["index"])
        classes = np.full((count, job.top), -1, dtype=np.int64)
        scores = np.zeros((count, job.top), dtype=np.float64)
        errors = np.full(count, "", dtype=object)
        readable, views = [], []
        for i, path in enumerate(rows["path"]):
            _, images, error = prepare(str(path), width, height, job.preprocess, job.crops)
            if images is None:
                errors[i] = error
            else:
                readable.append(i)
                views.append(images)
        if readable:
            for i, ranked in zip(readable, rank(self.net, views, job.top, str(rows["path"][readable[0]]))):
                classes[i] = [c for c, _ in ranked]
                scores[i] = [p for _, p in ranked]
        return {"index": rows["index"], "classes": classes, "scores": scores, "error": errors}


def connect(address: str | None) -> None:
    """ray.init: the cluster at `address` (or RAY_ADDRESS), else a local one for this run.
    A wrong address or a missing token is one line."""
    # Read when ray is first imported: Ray Data's start and finish lines off, and the token
    # sent where one is given (Ray sends none unless RAY_AUTH_MODE says token).
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    where = address or os.environ.get("RAY_ADDRESS")
    try:
        if where:
            _probe(where)
            ray.init(address=address, **quiet)
        else:
            start_local(ray, quiet)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError, _ray_authentication_error()) as error:
        if _says_token(error):
            raise KernError(f"Ray cluster {where} asks for a token: {_token_state()}") from None
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise KernError(f"cannot reach a Ray cluster at {where}: {first}") from None


def start_local(ray, options: dict, tries: int = 2) -> None:
    """An embedded cluster, started now and stopped by shutdown(). Ray gives its raylet 30 s to
    register and then raises a bare Exception; on a loaded machine (a CI run) it did not make
    it once: tried again, then one line."""
    for attempt in range(tries):
        try:
            ray.init(address="local", **options)
            return
        except Exception as error:  # noqa: BLE001 - Ray's startup timeout is a plain Exception
            ray.shutdown(wait_for_processes=True)
            if attempt + 1 == tries:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise KernError(f"could not start a local Ray cluster ({tries} tries): {first}") from None


def _says_token(error: BaseException | None) -> bool:
    """Whether Ray's error, or one it came from, is a refused or missing token."""
    while error is not None:
        if isinstance(error, _ray_authentication_error()) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _ray_authentication_error() -> type:
    import ray

    return ray.exceptions.AuthenticationError


def _token_state() -> str:
    given = [name for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH") if os.environ.get(name)]
    if given:
        return f"the one in {given[0]} was refused"
    return "none is set (RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH naming a file that holds it)"


def _probe(address: str, seconds: float = 5.0) -> None:
    """A TCP connection to host:port first: ray.init retries an address where nothing
    listens for ever (printing a line every 5 s)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise KernError(f"cannot reach a Ray cluster at {address}: {error.strerror or error}") from None


def check_fits(cluster: Cluster, job: Job) -> None:
    """The smallest pool must fit the cluster's CPUs and GPUs: Ray would wait for them forever."""
    import ray

    resources = ray.cluster_resources()
    low = cluster.actors[0]
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if low * job.threads > cpus:
        raise KernError(
            f"--actors {low} x --threads-per-actor {job.threads} need {low * job.threads} CPUs: "
            f"the Ray cluster has {cpus:g}"
        )
    if low * cluster.gpus_per_actor > gpus:
        raise KernError(
            f"--actors {low} x --gpus-per-actor {cluster.gpus_per_actor:g} need "
            f"{low * cluster.gpus_per_actor:g} GPUs: the Ray cluster has {gpus:g}"
        )


def shutdown() -> None:
    """Disconnect; an embedded cluster's daemons are stopped and waited for (without the wait
    ray.shutdown() only signals them and returns)."""
    import ray

    ray.shutdown(wait_for_processes=True)


def classify(
    paths: list[str], job: Job, cluster: Cluster, batch: int, actor: type = Classifier
) -> Iterator[Result]:
    """Every path's Result, in order, each once. `actor` is the actor class (tests give one
    that dies mid-run)."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller's tqdm bar is the one progress line
    context.execution_options.preserve_order = True
    low, high = cluster.actors
    blocks = max(1, -(-len(paths) // batch))  # a block per batch: the work spreads over the actors
    items = [{"index": i, "path": p} for i, p in enumerate(paths)]
    rows = ray.data.from_items(items, override_num_blocks=blocks)
    # The job goes in the class, not as constructor arguments (which Ray keeps in its object
    # store and warns about for actors it may restart).
    bound = type(actor.__name__, (actor,), {"job": job})
    results = rows.map_batches(
        bound,
        batch_size=batch,
        batch_format="numpy",
        # Ray Data's actor pools restart a killed actor and run its batch again (max_restarts
        # and max_task_retries -1 by default): tests/test_ray_engine.py kills one mid-run.
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_cpus=job.threads,
        num_gpus=cluster.gpus_per_actor or None,
    )
    waiting: dict[int, Result] = {}
    expected = 0
    try:
        for block in results.iter_batches(batch_size=None, batch_format="numpy"):
            for index, classes, scores, error in zip(block["index"], block["classes"], block["scores"],
                                                     block["error"]):
                ranked = None if error else [(int(c), float(p)) for c, p in zip(classes, scores)]
                waiting.setdefault(int(index), Result(int(index), ranked, error or None))
            while expected in waiting:
                yield waiting.pop(expected)
                expected += 1
    except ray.exceptions.RayError as error:
        raise KernError(f"the Ray run failed: {_cause(error)}") from None
    if expected != len(paths):
        raise KernError(f"the Ray run gave {expected} of {len(paths)} images")


def _cause(error: Exception) -> str:
    """The last line of what failed in an actor (a KernError's own line), not Ray's traceback."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__
