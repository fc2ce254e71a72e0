"""Darknet's `classifier predict`: python -m nets.predict [CFG] [WEIGHTS] [IMAGE ...]

With no arguments it runs the shipped Tiny Darknet on data/dog.jpg. CFG is a path or the
name of a shipped cfg (`--list` shows them). With a cfg but no image it asks
`Enter Image Path:` until end of input. Output as Darknet's: the layer table and
`<path>: Predicted in <s> seconds.` on stderr, `"%5.2f%%: %s"` lines on stdout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

import nets
from kern.backend import BACKENDS
from kern.errors import KernError
from nets import cli, fetch
from nets.caffe.names import is_caffemodel, is_prototxt, where_published
from nets.data import (
    CFG_DIR,
    DEFAULT_DATA,
    SAMPLE_IMAGE,
    data_top,
    find_cfg,
    load_names,
    shipped_cfgs,
    shipped_prototxts,
)
from nets.files import check_writable
from nets.image import IMAGE_SUFFIXES, PREPROCESS, images_under, load_image
from nets.network import Network, NetworkSpec, check_memory
from nets.weights import expected_bytes, random_weights, read_weights

DEFAULT_CFG = CFG_DIR / "tiny.cfg"


def parse_args(argv: list[str] | None):
    parser = cli.ArgumentParser(
        prog="python -m nets.predict",
        description="Classify images with a Darknet cfg + weights (Darknet's classifier predict).",
    )
    parser.add_argument(
        "cfg", nargs="?",
        help="a cfg path or a shipped cfg's name, e.g. darknet19 (none: tiny on data/dog.jpg)",
    )
    parser.add_argument(
        "paths", nargs="*", metavar="[WEIGHTS] IMAGE",
        help="a .weights file (else looked up beside the cfg, in weights/, here, in the cache), "
        "then images; no image: ask for paths",
    )
    parser.add_argument("--top", type=int, help="how many classes to print (default: top= of --data)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Darknet .data file with names=")
    parser.add_argument("--backend", default="cpu", choices=list(BACKENDS), help="where the network runs")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    parser.add_argument(
        "--preprocess", default="letterbox", choices=list(PREPROCESS),
        help="letterbox (classifier predict), crop (centre crop, as classifier valid), resize",
    )
    parser.add_argument(
        "--mean", default=None, metavar="B,G,R|FILE",
        help="Caffe models: the per-channel mean subtracted from 0-255 BGR pixels, or a mean .binaryproto "
        "(default 104,117,123, ImageNet's)",
    )
    parser.add_argument(
        "--labels", metavar="FILE", help="Caffe models: class names, one per line, in the model's output order"
    )
    parser.add_argument("--download", action="store_true", help="fetch missing weights into the cache")
    parser.add_argument("--weights-url", help="where --download fetches from (default: Darknet's site)")
    parser.add_argument(
        "--random-weights", type=int, nargs="?", const=0, metavar="SEED",
        help="seeded random weights (timing and teaching; predictions mean nothing)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="nothing on stderr but errors (no table, loading or timing lines)"
    )
    parser.add_argument(
        "--features", type=int, metavar="N",
        help="write layer N's output for every image (NCHW, stacked) to --out instead of classes",
    )
    parser.add_argument("--out", help="the .npy file --features writes")
    parser.add_argument(
        "--json", action="store_true",
        help="one JSON object per image on stdout: its path, the top classes and their probabilities",
    )
    parser.add_argument(
        "--list", action="store_true",
        help="list the shipped cfgs (input, BFLOPs, weights size, whether the weights are here) and exit",
    )
    args = parser.parse_intermixed_args(argv)  # options may come before, between or after paths
    if args.top is not None and not 1 <= args.top < 1 << 31:
        parser.error(f"--top {args.top}: expected a positive number")
    if (args.features is None) != (args.out is None):
        parser.error("--features N and --out FILE.npy go together")
    if args.random_weights is not None and not 0 <= args.random_weights < 1 << 64:
        parser.error(f"--random-weights {args.random_weights}: expected a seed from 0 to 2^64 - 1")
    return args


def split_paths(cfg: str | None, paths: list[str]) -> tuple[Path, Path | None, list[str]]:
    """(cfg, weights or None, images): a second path ending in .weights (.caffemodel after a
    .prototxt) is the weights file."""
    if cfg is None:
        return DEFAULT_CFG, None, [str(SAMPLE_IMAGE)]
    if is_prototxt(find_cfg(cfg)):
        if paths and is_caffemodel(paths[0]):
            return find_cfg(cfg), Path(paths[0]), paths[1:]
        return find_cfg(cfg), None, paths
    if paths and paths[0].endswith(".weights"):
        return find_cfg(cfg), Path(paths[0]), paths[1:]
    return find_cfg(cfg), None, paths


def list_cfgs() -> str:
    """The shipped cfgs: name, input, BFLOPs, weights size and where the weights are, if here."""
    cache = fetch.cache_dir()
    lines = [f"{'name':<20} {'input':>11} {'BFLOPs':>7} {'weights MB':>10}  weights here"]
    for cfg in shipped_cfgs():
        spec = nets.load_spec(cfg)
        channels, height, width = spec.input_shape
        found = fetch.find_weights(cfg, cache)
        if found:
            where = str(found)
        elif cfg.stem in fetch.TRAIN_YOURSELF:
            where = "no (none published: python -m nets.train trains them)"
        else:
            where = f"no (--download fetches them into {cache})"
        lines.append(
            f"{cfg.stem:<20} {f'{width}x{height}x{channels}':>11} {spec.flops / 1e9:>7.2f} "
            f"{expected_bytes(spec.layers) / 1e6:>10.1f}  {where}"
        )
    lines.append("")
    lines.append(f"{'Caffe prototxt':<28} {'input':>11} {'BFLOPs':>7}  trained weights (.caffemodel) are at")
    from nets.caffe import read_net

    for prototxt in shipped_prototxts():
        spec = read_net(prototxt).spec
        channels, height, width = spec.input_shape
        lines.append(
            f"{prototxt.stem:<28} {f'{width}x{height}x{channels}':>11} {spec.flops / 1e9:>7.2f}  "
            f"{where_published(prototxt)}"
        )
    return "\n".join(lines)


def say_on_stderr(quiet: bool):
    """print() to stderr, flushed; nothing with --quiet."""

    def say(*text: str, end: str = "\n") -> None:
        if not quiet:
            print(*text, end=end, file=sys.stderr, flush=True)

    return say


def load_network(args, spec: NetworkSpec, weights: Path | None, names: list[str], model=None) -> Network:
    """The network with its weights; `model`: a translated Caffe prototxt (nets.caffe.CaffeNet)."""
    cfg = Path(spec.cfg_path)
    check_memory(spec)
    backend = nets.make_backend(args.backend, threads=args.threads)  # fail fast if unavailable
    say = say_on_stderr(args.quiet)
    say(spec.table())
    if model is not None:
        from nets.caffe import caffe_values

        say(f"Loading weights from {weights or f'random seed {args.random_weights}'}...", end="")
        try:
            values = caffe_values(model, weights, args.random_weights)
        except KernError:
            say()  # the error goes on a line of its own
            raise
        say("Done!")
    elif args.random_weights is not None:
        say(f"Random weights, seed {args.random_weights}...", end="")
        values = random_weights(spec.layers, args.random_weights)
        say("Done!")
    else:
        if weights is None:
            weights = fetch.locate_weights(cfg, spec.layers, args.download, args.weights_url)
        say(f"Loading weights from {weights}...", end="")
        try:
            values = read_weights(weights, spec.layers)
        except KernError:
            say()  # the error goes on a line of its own
            raise
        say("Done!")
    with cli.notice_if_slow(cli.slow_notice(args.backend)):
        net = Network(spec, values, backend, names)
        if args.backend in cli.WARMED_UP:
            net.warm_up()
    return net


def predict_one(net: Network, path: str, top: int, args, features: list | None = None) -> None:
    image = load_image(path)
    _, height, width = net.input_shape
    x = args.prepare(image, width, height)
    if features is not None:
        features.append(net.forward(x[None], until=args.features)[0])
        say_on_stderr(args.quiet)(f"{path}: features of layer {args.features}, {features[-1].shape}")
        return
    start = time.perf_counter()
    scores = net.predict(x[None])[0]
    elapsed = time.perf_counter() - start
    if not np.isfinite(scores).all():
        raise KernError(
            f"{path}: the network's output is not finite (NaN or inf): weights or options too large for float32"
        )
    say_on_stderr(args.quiet)(f"{path}: Predicted in {elapsed:f} seconds.")
    ranked = net.top_k(scores, top)
    if args.json:
        classes = [{"index": i, "label": net.labels[i], "probability": score} for i, score in ranked]
        record = {"path": path, "seconds": elapsed, "top": classes}
        if args.random_weights is not None:
            record["random_weights_seed"] = args.random_weights
        print(json.dumps(record), flush=True)
        return
    if args.random_weights is not None:
        print(f"(random weights, seed {args.random_weights}: not a real prediction)")
    for index, score in ranked:
        print("%5.2f%%: %s" % (score * 100, net.labels[index]))
    sys.stdout.flush()


def ask_paths():
    """Darknet's prompt loop; ends on end of input. The prompt goes to stdout only when a person
    types the paths (stdin a terminal), else to stderr: piped paths leave stdout the results'."""
    prompt = sys.stdout if sys.stdin.isatty() else sys.stderr
    while True:
        print("Enter Image Path: ", end="", flush=True, file=prompt)
        line = sys.stdin.readline()
        if not line:
            print(file=prompt)
            return
        if line.strip():
            yield unquoted(line.strip())


def unquoted(path: str) -> str:
    """A path as a terminal's drag and drop pastes it, in quotes ('data/eagle.jpg'): unquoted."""
    if len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
        return path[1:-1]
    return path


def expand_folders(paths: list[str]) -> list[str]:
    """Image paths, each folder replaced by the images below it (sorted), as nets.valid reads them."""
    out: list[str] = []
    for path in paths:
        if not Path(path).is_dir():
            out.append(path)
        elif not (found := images_under(Path(path))):
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise KernError(f"{path}: a folder with no images in it (looked for {kinds})")
        else:
            out.extend(found)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_cfgs())
        return 0
    cfg, weights, images = split_paths(args.cfg, args.paths)
    model = None
    if is_prototxt(cfg):  # a Caffe model: Caffe's preprocessing and label order
        from nets.caffe import read_net
        from nets.caffe.preprocess import IMAGENET_MEAN_BGR, caffe_input, caffe_labels, parse_mean

        model = read_net(cfg)
        if weights is None and args.random_weights is None:
            raise KernError(
                f"{cfg}: expected its .caffemodel after the prototxt (or --random-weights SEED); "
                f"the trained weights are at {where_published(cfg)}"
            )
        spec = model.spec
        names = caffe_labels(spec.outputs, args.labels)
        top = min(args.top or 5, spec.outputs)
        mean = parse_mean(args.mean) if args.mean else IMAGENET_MEAN_BGR
        args.prepare = functools.partial(caffe_input, mean=mean)
    else:
        spec = nets.load_spec(cfg)
        names = load_names(args.data, spec.outputs)
        top = args.top or data_top(args.data)
        args.prepare = PREPROCESS[args.preprocess]
    if args.features is not None:
        if not 0 <= args.features < len(spec.layers):
            raise KernError(f"--features {args.features}: {spec.cfg_path} has layers 0..{len(spec.layers) - 1}")
        check_writable(args.out)
    net = load_network(args, spec, weights, names, model)
    features: list | None = [] if args.features is not None else None
    failed = 0
    try:
        for number, path in enumerate(expand_folders(images) if images else ask_paths()):
            # Simulated and reference backends have no warm-up: say why the first image takes long.
            slow = number == 0 and args.backend not in cli.WARMED_UP
            try:
                with cli.notice_if_slow(cli.slow_notice(args.backend)) if slow else contextlib.nullcontext():
                    predict_one(net, path, top, args, features)
            except KernError as error:  # one bad image (or a typo at the prompt) stops nothing
                print(f"error: {cli.one_line(str(error))}", file=sys.stderr)
                failed += 1
    except KeyboardInterrupt:
        if images:
            raise
        print()
    if features:
        np.save(args.out, np.stack(features))
        say_on_stderr(args.quiet)(f"wrote {len(features)} images' features to {args.out}")
    return 2 if failed and images else 0  # at the prompt, a typo is part of the conversation


def entry() -> None:
    """The console script (pyproject.toml's [project.scripts])."""
    sys.exit(cli.run(main))


if __name__ == "__main__":
    entry()
