"""Darknet's `classifier valid`: top-1 / top-5 accuracy of a network over labelled images.

    python -m nets.valid CFG WEIGHTS SOURCE [--top 5] [--batch N] [--workers N]
                         [--preprocess crop|letterbox|resize] [--crops 1|10] [--limit N] [--json F]

SOURCE is a Darknet .data file (its valid= list, labels= and classes=), a list file (one image
path per line) or a folder searched recursively. An image's true class is the first label
(a synset id such as n01440764) that occurs in its path, as Darknet finds it; that covers file
names like n01440764_tench.JPEG and ImageFolder trees (one folder per synset) alike. Images with
no label in their path, and images that cannot be read, are counted and listed, never dropped
silently; the run goes on.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kern.backend import BACKENDS
from kern.errors import KernError
from nets import cli
from nets.data import DEFAULT_DATA, DEFAULT_LABELS, load_names, read_data_file, read_lines, resolve
from nets.image import PREPROCESS, load_image, resize_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Source:
    paths: list[str]
    labels_path: Path


def read_source(source: str, labels: str | None) -> Source:
    """The image paths and the labels list that a .data file, list file or folder names."""
    path = Path(source)
    if path.is_dir():
        images = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return Source(images, Path(labels) if labels else DEFAULT_LABELS)
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
    """1 view (the chosen preprocessing) or 10: centre and four corners of the image resized to
    (net + 32), and the same five of its mirror image."""
    if crops == 1:
        return PREPROCESS[preprocess](image, width, height)[None]
    big = resize_image(image, width + 32, height + 32)
    out = []
    for picture in (big, big[:, :, ::-1]):
        for top, left in ((16, 16), (0, 0), (0, 32), (32, 0), (32, 32)):
            out.append(picture[:, top : top + height, left : left + width])
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
    unreadable: list[str] = field(default_factory=list)
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
        lines = [
            f"top-1 {top1:.2f}% ({self.top1}/{self.counted}), top-{self.top} {topk:.2f}% "
            f"({self.topk}/{self.counted}) in {seconds:.1f} s, {speed:.1f} images/s",
        ]
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} images had no label in their path, e.g. {self.unlabelled[0]}")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} images could not be read, e.g. {self.unreadable[0]}")
        return "\n".join(lines)


def parse_args(argv):
    parser = cli.ArgumentParser(prog="python -m nets.valid", description=__doc__.splitlines()[0])
    parser.add_argument("cfg", help="a cfg path or a shipped cfg's name (python -m nets.predict --list)")
    parser.add_argument("weights", help="a .weights file, or 'random' for seeded random weights")
    parser.add_argument("source", help=".data file, list of image paths, or a folder of images")
    parser.add_argument(
        "--top", type=int, default=5, help="an image counts for top-K if its class is among the K best"
    )
    parser.add_argument("--backend", default="cpu", choices=list(BACKENDS), help="where the network runs")
    parser.add_argument("--threads", type=int, help="CPU threads for the network (default: all cores)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (0: in-process)")
    parser.add_argument(
        "--preprocess", default="crop", choices=list(PREPROCESS),
        help="crop: centre square, resized (classifier valid); letterbox: aspect kept, grey bars "
        "(classifier predict); resize: stretched",
    )
    parser.add_argument(
        "--crops", type=int, default=1, choices=(1, 10),
        help="10: ten crops of the image resized to the input + 32, and their mirrors, outputs "
        "summed (classifier valid10)",
    )
    parser.add_argument("--limit", type=int, help="only the first N images")

    parser.add_argument("--labels", help="labels list (default: labels= of the .data, else ImageNet's)")
    parser.add_argument("--json", help="write per-image top-k and the totals here")
    args = parser.parse_args(argv)
    for name in ("top", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected a positive number")
    if args.workers < 0:
        parser.error(f"--workers {args.workers}: expected 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import nets  # after argument checks: loading compiles nothing, but imports Numba

    spec = nets.load_spec(args.cfg)
    source = read_source(args.source, args.labels)
    labels = read_lines(source.labels_path, "labels list")[: spec.outputs]
    names = load_names(DEFAULT_DATA, spec.outputs) if spec.outputs == 1000 else labels
    paths = source.paths[: args.limit] if args.limit else source.paths
    if not paths:
        raise KernError(f"{args.source}: no images found")
    random = args.weights == "random"
    with cli.notice_if_slow(cli.COMPILE_NOTICE):
        net = nets.load(
            args.cfg, None if random else args.weights, random_seed=0 if random else None,
            backend=args.backend, threads=args.threads,
        )
        net.warm_up()
    _, height, width = net.input_shape
    tally = Tally(args.top)
    label_of = {}
    for path in paths:
        label = true_class(path, labels)
        if label is None:
            tally.unlabelled.append(path)
        else:
            label_of[path] = label
    work = functools.partial(
        prepare, width=width, height=height, preprocess=args.preprocess, crops=args.crops
    )
    start = time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers else None
    prepared = pool.imap(work, label_of, chunksize=4) if pool else map(work, label_of)
    progress = tqdm(total=len(label_of), unit="img", file=sys.stderr, dynamic_ncols=True)
    interrupted = False
    try:
        batch: list[tuple[str, np.ndarray]] = []
        for path, images, error in prepared:
            if images is None:
                tally.unreadable.append(error)
                progress.update(1)
            else:
                batch.append((path, images))
            if len(batch) == args.batch:
                _run_batch(net, batch, label_of, tally, names, progress)
                batch = []
        if batch:
            _run_batch(net, batch, label_of, tally, names, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        if pool:
            pool.terminate()
    seconds = time.perf_counter() - start
    if interrupted:
        print("interrupted: the summary so far", file=sys.stderr)
    print(tally.summary(seconds))
    if random:
        print("(random weights, seed 0: these rates mean nothing)")
    if args.json:
        _write_json(args, tally, seconds)
    return 130 if interrupted else 0


def _run_batch(net, batch, label_of, tally: Tally, names, progress) -> None:
    crops = batch[0][1].shape[0]
    images = np.concatenate([views for _, views in batch])
    probs = net.predict(images).reshape(len(batch), crops, -1).mean(axis=1)
    for (path, _), scores in zip(batch, probs):
        tally.add(path, label_of[path], net.top_k(scores, tally.top), names)
    top1, topk = tally.rates()
    progress.set_postfix_str(f"top-1 {top1:.2f}% top-{tally.top} {topk:.2f}%", refresh=False)
    progress.update(len(batch))


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


if __name__ == "__main__":
    sys.exit(cli.run(main))
