"""Darknet's `classifier valid`: top-1 / top-5 accuracy of a network over labelled images.

    python -m nets.valid CFG WEIGHTS SOURCE [--top 5] [--batch N] [--workers N]
                         [--preprocess crop|letterbox|resize|caffe] [--crops 1|10] [--limit N] [--json F]
                         [--engine local|ray [--address ADDR] [--actors N|MIN,MAX]
                          [--threads-per-actor N] [--gpus-per-actor N]]

SOURCE is a Darknet .data file (its valid= list, labels= and classes=), a list file (one image
path per line) or a folder searched recursively. An image's true class is the first label
(a synset id such as n01440764) that occurs in its path, as Darknet finds it; that covers file
names like n01440764_tench.JPEG and ImageFolder trees (one folder per synset) alike. Images with
no label in their path, and images that cannot be read, are counted and listed, never dropped
silently; the run goes on.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kern.backend import BACKENDS
from kern.errors import KernError
from nets import cli, fetch
from nets.caffe.names import is_prototxt
from nets.caffe.preprocess import caffe_labels, caffe_synsets
from nets.data import DEFAULT_DATA, DEFAULT_LABELS, find_cfg, load_names, read_data_file, read_lines, resolve
from nets.files import check_writable
from nets.image import PREPROCESS, images_under, load_image, resize_image
from nets.network import check_memory


@dataclass
class Source:
    paths: list[str]
    labels_path: Path


def read_source(source: str, labels: str | None) -> Source:
    """The image paths and the labels list that a .data file, list file or folder names. A
    list's every line counts, repeated ones too, as in Darknet."""
    path = Path(source)
    if path.is_dir():
        return Source(images_under(path), Path(labels) if labels else DEFAULT_LABELS)
    if path.suffix == ".data":
        options = read_data_file(path)
        if "valid" not in options:
            raise KernError(f"{path}: expected a valid= line naming the list of images")
        labels_path = labels or options.get("labels") or DEFAULT_LABELS
        return Source(_list_file(options["valid"]), resolve(labels_path))
    return Source(_list_file(source), Path(labels) if labels else DEFAULT_LABELS)


def _list_file(path: str) -> list[str]:
    return [line for line in read_lines(path, "image list") if line]


def true_class(path: str, labels: list[str]) -> int | None:
    """Darknet's rule: the first label that occurs in the path."""
    return next((i for i, label in enumerate(labels) if label in path), None)


def views(image: np.ndarray, width: int, height: int, preprocess: str, crops: int) -> np.ndarray:
    """1 view (the chosen preprocessing) or Darknet's 10 (ten_crops)."""
    if crops == 1:
        return PREPROCESS[preprocess](image, width, height)[None]
    return ten_crops(image, width, height)


# Darknet's validate_classifier_10: crop offsets (dx, dy) in the image resized to net + 32.
SHIFT = 32
TEN_CROP_OFFSETS = ((-SHIFT, -SHIFT), (SHIFT, -SHIFT), (0, 0), (-SHIFT, SHIFT), (SHIFT, SHIFT))


def ten_crops(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's `classifier valid10` views: the image resized (aspect not kept) to
    (width + 32) x (height + 32), unless it has that size already (load_image_color); five
    crops at TEN_CROP_OFFSETS, where pixels outside the image take the nearest edge pixel
    (crop_image's clamping); then the same five of the mirrored image (flip_image)."""
    _, in_h, in_w = image.shape
    big = image
    if (in_h, in_w) != (height + SHIFT, width + SHIFT):
        big = resize_image(image, width + SHIFT, height + SHIFT)
    out = []
    for picture in (big, big[:, :, ::-1]):
        for dx, dy in TEN_CROP_OFFSETS:
            rows = np.clip(np.arange(height) + dy, 0, picture.shape[1] - 1)
            cols = np.clip(np.arange(width) + dx, 0, picture.shape[2] - 1)
            out.append(picture[:, rows[:, None], cols[None, :]])
    return np.stack(out)


def prepare(
    path: str, width: int, height: int, preprocess: str, crops: int
) -> tuple[str, np.ndarray | None, str | None]:
    """Decode and preprocess one image (in a worker process): (path, views or None, error)."""
    try:
        image = load_image(path)
    except KernError as error:
        return path, None, str(error)
    return path, views(image, width, height, preprocess, crops), None


@dataclass
class Tally:
    top: int
    counted: int = 0
    top1: int = 0
    topk: int = 0
    unlabelled: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    records: list[dict] = field(default_factory=list)

    def add(self, path: str, label: int, ranked: list[tuple[int, float]], names: list[str]) -> None:
        self.counted += 1
        classes = [i for i, _ in ranked]
        self.top1 += classes[0] == label
        self.topk += label in classes[: self.top]
        self.records.append({
            "path": path, "label": label, "label_name": names[label],
            "top": [{"class": i, "name": names[i], "probability": p} for i, p in ranked],
        })

    def rates(self) -> tuple[float, float]:
        n = max(self.counted, 1)
        return 100 * self.top1 / n, 100 * self.topk / n

    def summary(self, seconds: float) -> str:
        top1, topk = self.rates()
        speed = self.counted / max(seconds, 1e-9)
        rates = f"top-1 {top1:.2f}% ({self.top1}/{self.counted})"
        if self.top > 1:
            rates += f", top-{self.top} {topk:.2f}% ({self.topk}/{self.counted})"
        lines = [f"{rates} in {seconds:.1f} s, {speed:.1f} images/s"]
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} images had no label in their path, e.g. {self.unlabelled[0]}")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} images could not be read, e.g. {self.unreadable[0]['error']}")
        return "\n".join(lines)


def parse_args(argv):
    parser = cli.ArgumentParser(prog="python -m nets.valid", description=__doc__.splitlines()[0])
    parser.add_argument("cfg", help="a cfg path or a shipped cfg's name (python -m nets.predict --list)")
    parser.add_argument(
        "weights",
        help="a .weights file, a shipped cfg's name for its weights as predict finds them ('tiny'), "
        "or 'random' for seeded random weights",
    )
    parser.add_argument("source", help=".data file, list of image paths, or a folder of images")
    parser.add_argument(
        "--top", type=int, default=5, help="an image counts for top-K if its class is among the K best"
    )
    parser.add_argument("--backend", default="cpu", choices=list(BACKENDS), help="where the network runs")
    parser.add_argument("--threads", type=int, help="CPU threads for the network (default: all cores)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument(
        "--workers", type=int, default=1, help="decoding processes (0: in-process; Ray actors decode their own)"
    )
    parser.add_argument(
        "--preprocess", choices=list(PREPROCESS),
        help="crop: centre square, resized (classifier valid; the default); letterbox: aspect kept, grey "
        "bars (classifier predict); resize: stretched; caffe: Caffe's (the default for a .prototxt)",
    )
    parser.add_argument(
        "--crops", type=int, default=1, choices=(1, 10),
        help="10: ten crops of the image resized to the input + 32, and their mirrors, outputs "
        "summed (classifier valid10; --preprocess does not apply)",
    )
    parser.add_argument("--limit", type=int, help="only the first N images (default: all)")

    parser.add_argument("--labels", help="labels list (default: labels= of the .data, else ImageNet's)")
    parser.add_argument(
        "--engine", default="local", choices=("local", "ray"),
        help="ray: actors on Ray (pip install 'kern-nn[ray]') load the network and decode the images, "
        "on this machine or a cluster",
    )
    parser.add_argument("--address", help="ray: the cluster (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--actors", default="1", help="ray: N actors, or MIN,MAX (a pool that grows)")
    parser.add_argument("--threads-per-actor", type=int, default=1, help="ray: CPU threads per actor")
    parser.add_argument("--gpus-per-actor", type=float, default=0, help="ray: GPUs per actor (--backend cuda)")
    parser.add_argument("--json", help="write per-image top-k and the totals here")
    args = parser.parse_args(argv)
    for name in ("top", "batch", "limit"):
        value = getattr(args, name)
        if value is not None and not 1 <= value < 1 << 31:
            parser.error(f"--{name} {value}: expected a positive number")
    if not 1 <= args.threads_per_actor <= 1024:
        parser.error(f"--threads-per-actor {args.threads_per_actor}: expected 1 to 1024")
    if not 0 <= args.gpus_per_actor <= 64:
        parser.error(f"--gpus-per-actor {args.gpus_per_actor}: expected 0 to 64")
    if not 0 <= args.workers <= 256:
        parser.error(f"--workers {args.workers}: expected 0 to 256")
    return args


def _ignore_interrupts() -> None:
    """Decoding workers leave Ctrl-C to the main process, which writes what it has counted
    and then ends them (a worker interrupted while sending a result hung the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_workers(count: int):
    """The decoding pool, its processes started with Ctrl-C ignored: they inherit that from
    their first instruction (Python leaves an ignored SIGINT ignored), so a Ctrl-C while they
    are still importing cannot print a traceback in them (one did in a CI run); the initializer
    keeps it so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return multiprocessing.get_context("spawn").Pool(count, initializer=_ignore_interrupts)
    finally:
        signal.signal(signal.SIGINT, previous)


def end_workers(pool, wait: float = 10.0) -> None:
    """pool.terminate() and join, given at most `wait` seconds: terminate kills workers in a
    race with the pool's own task thread, and a worker killed while it sends a result keeps the
    result queue's lock, on which that thread (and terminate with it) then waits forever (it
    hung nets.valid after Ctrl-C once, in CI). Past `wait`, what is left of the workers is
    killed and the process goes on; the pool's threads are daemons and do not hold up its exit."""
    closer = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
    closer.start()
    closer.join(wait)
    if closer.is_alive():
        for child in multiprocessing.active_children():
            child.kill()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import nets  # after argument checks: loading compiles nothing, but imports Numba

    if args.json:
        check_writable(args.json)
    spec = nets.load_spec(args.cfg)
    check_memory(spec, args.batch * args.crops)
    source = read_source(args.source, args.labels)
    caffe = is_prototxt(find_cfg(args.cfg))
    if caffe and args.labels is None and spec.outputs == 1000:  # Caffe's order: sorted synsets
        labels = caffe_synsets()
    else:
        labels = read_lines(source.labels_path, "labels list")[: spec.outputs]
    if len(labels) < spec.outputs:
        raise KernError(
            f"{source.labels_path}: has {len(labels)} labels, the network has {spec.outputs} outputs"
        )
    if caffe:
        names = caffe_labels(spec.outputs) if spec.outputs == 1000 else labels
    else:
        names = load_names(DEFAULT_DATA, spec.outputs) if spec.outputs == 1000 else labels
    args.preprocess = args.preprocess or ("caffe" if caffe else "crop")
    paths = source.paths[: args.limit] if args.limit else source.paths
    if not paths:
        raise KernError(f"{args.source}: no images found")
    random = args.weights == "random"
    weights = None if random else (fetch.named_weights(args.weights) or args.weights)
    tally = Tally(args.top)
    labelled: list[tuple[str, int]] = []  # in list order, repeats included
    for path in paths:
        label = true_class(path, labels)
        if label is None:
            tally.unlabelled.append(path)
        else:
            labelled.append((path, label))
    if args.engine == "ray":
        count, end = _ray_engine(args, weights, random, labelled, tally, names)
    else:
        count, end = _local_engine(args, weights, random, labelled, tally, names)
    start = time.perf_counter()
    try:
        interrupted = count()
        # What was counted is reported before the workers (or actors) are ended.
        seconds = time.perf_counter() - start
        if interrupted:
            print("interrupted: the summary so far", file=sys.stderr)
        print(tally.summary(seconds))
        if random:
            print("(random weights, seed 0: these rates mean nothing)")
        if args.json:
            _write_json(args, tally, seconds)
    finally:
        end()
    if interrupted:
        return 130
    if not tally.counted:
        raise KernError(
            f"{args.source}: no image was counted ({len(tally.unlabelled)} had no label in their "
            f"path, {len(tally.unreadable)} could not be read)"
        )
    return 0


def _local_engine(args, weights, random: bool, labelled, tally: Tally, names):
    """The network loaded here, images decoded by --workers processes: (count, end)."""
    import nets

    with cli.notice_if_slow(cli.slow_notice(args.backend)):
        net = nets.load(
            args.cfg, weights, random_seed=0 if random else None,
            backend=args.backend, threads=args.threads,
        )
        if args.backend in cli.WARMED_UP:
            net.warm_up()
    _, height, width = net.input_shape
    work = functools.partial(
        prepare, width=width, height=height, preprocess=args.preprocess, crops=args.crops
    )
    pool = None
    if args.workers:
        pool = _start_workers(args.workers)

    def end() -> None:
        if pool:
            end_workers(pool)

    return (lambda: _count(net, labelled, pool, work, tally, names, args.batch)), end


def _ray_engine(args, weights, random: bool, labelled, tally: Tally, names):
    """Ray actors load the network and decode the images: (count, end)."""
    if importlib.util.find_spec("ray") is None:  # imported by ray_engine.connect, after its settings
        raise KernError("--engine ray: ray is not installed (pip install 'kern-nn[ray]')")
    from nets import ray_engine

    if args.gpus_per_actor and args.backend not in ("cuda", "cudasim"):
        raise KernError(f"--gpus-per-actor {args.gpus_per_actor}: expected --backend cuda")
    actors = ray_engine.parse_actors(args.actors)
    job = ray_engine.Job(
        cfg=str(args.cfg), weights=str(weights) if weights else None, random_seed=0 if random else None,
        backend=args.backend, threads=args.threads_per_actor, preprocess=args.preprocess,
        crops=args.crops, top=args.top,
    )
    cluster = ray_engine.Cluster(args.address, actors, args.gpus_per_actor)
    ray_engine.connect(args.address)
    try:
        ray_engine.check_fits(cluster, job)
    except KernError:
        ray_engine.shutdown()
        raise
    count = lambda: _count_on_ray(ray_engine, job, cluster, labelled, tally, names, args.batch)  # noqa: E731
    return count, ray_engine.shutdown


def _count_on_ray(ray_engine, job, cluster, labelled, tally: Tally, names, batch_size: int) -> bool:
    """As _count, the images classified by Ray actors; True if Ctrl-C ended it early."""
    progress = tqdm(total=len(labelled), unit="img", file=sys.stderr, dynamic_ncols=True)
    progress.set_postfix_str(ray_engine.COMPILE_NOTICE)
    try:
        results = ray_engine.classify([path for path, _ in labelled], job, cluster, batch_size)
        for (path, label), result in zip(labelled, results):
            if result.ranked is None:
                tally.unreadable.append({"path": path, "error": result.error})
                progress.update(1)
            else:
                tally.add(path, label, result.ranked, names)
                _show(tally, progress, 1)
    except KeyboardInterrupt:
        return True
    finally:
        progress.close()
    return False


def _count(net, labelled, pool, work, tally: Tally, names, batch_size: int) -> bool:
    """Decode (in the pool, if any) and classify every labelled image, batch by batch, into
    the tally; True if Ctrl-C ended it early."""
    wanted = [path for path, _ in labelled]
    prepared = pool.imap(work, wanted, chunksize=4) if pool else map(work, wanted)
    progress = tqdm(total=len(labelled), unit="img", file=sys.stderr, dynamic_ncols=True)
    try:
        batch: list[tuple[str, int, np.ndarray]] = []
        for (path, label), (_, images, error) in zip(labelled, prepared):
            if images is None:
                tally.unreadable.append({"path": path, "error": error})
                progress.update(1)
            else:
                batch.append((path, label, images))
            if len(batch) == batch_size:
                _run_batch(net, batch, tally, names, progress)
                batch = []
        if batch:
            _run_batch(net, batch, tally, names, progress)
    except KeyboardInterrupt:
        return True
    finally:
        progress.close()
    return False


def rank(net, views: list[np.ndarray], top: int, first_path: str) -> list[list[tuple[int, float]]]:
    """Each image's `top` best (class, probability), its views (1 or 10) run in one batch: their
    outputs summed, as Darknet's valid10 (ranking by the sum), shown as their mean."""
    crops = views[0].shape[0]
    scores = net.predict(np.concatenate(views)).reshape(len(views), crops, -1).sum(axis=1)
    if not np.isfinite(scores).all():
        raise KernError(f"{first_path}: the network's output is not finite (NaN or inf)")
    return [[(i, p / crops) for i, p in net.top_k(image_scores, top)] for image_scores in scores]


def _run_batch(net, batch: list[tuple[str, int, np.ndarray]], tally: Tally, names, progress) -> None:
    ranked = rank(net, [views for _, _, views in batch], tally.top, batch[0][0])
    for (path, label, _), image_ranked in zip(batch, ranked):
        tally.add(path, label, image_ranked, names)
    _show(tally, progress, len(batch))


def _show(tally: Tally, progress, images: int) -> None:
    top1, topk = tally.rates()
    progress.set_postfix_str(f"top-1 {top1:.2f}% top-{tally.top} {topk:.2f}%", refresh=False)
    progress.update(images)


def _write_json(args, tally: Tally, seconds: float) -> None:
    top1, topk = tally.rates()
    report = {
        "cfg": args.cfg, "weights": args.weights, "source": args.source,
        "preprocess": args.preprocess, "crops": args.crops, "top": args.top,
        "counted": tally.counted, "top1": top1, f"top{args.top}": topk, "seconds": seconds,
        "unlabelled": tally.unlabelled, "unreadable": tally.unreadable, "images": tally.records,
    }
    try:
        Path(args.json).write_text(json.dumps(report, indent=1))
    except OSError as error:
        raise KernError(f"cannot write {args.json}: {error.strerror}") from None


def entry() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    sys.exit(cli.run(main))


if __name__ == "__main__":
    entry()
