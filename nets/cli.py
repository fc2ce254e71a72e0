"""What the command-line tools share: one-line errors with exit status 2, --version, and a
word on stderr when a step takes long (never silent for more than ~2 s)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import numpy as np

from kern import DISTRIBUTION, __version__
from kern.errors import KernError

# What a first run waits for, measured on 2 cores (docs/benchmarks.md, "Start-up"): tiny 12-23 s
# (AMD EPYC Zen 4 and Zen 3, checkout or wheel; 17-18 s on Zen 4 with the 16-lane GEMM and
# Winograd in inference, 2026-12-04), every Darknet kernel about 31-40 s; Caffe's
# ResNeXt-26, ResNet-50 and DenseNet-121 28, 63 and 76 s (Zen 3, loaded), 21-23 s since the
# finish split (Zen 4, 2026-12-04; 31-40 s there before it; docs/caffe.md).
COMPILE_NOTICE = (
    "compiling this network's kernels (first run only: 12-60 s on 2 cores, by network; "
    "later runs load them from Numba's cache in about a second)..."
)
# The training kernels too (nets.train's first batch), cold cache, 2 AMD EPYC Zen 4 cores:
# cifar_small 34-40 s, cifar 46 s (2026-12-04; 67-70 s on 2026-12-03: docs/training.md).
TRAIN_COMPILE_NOTICE = (
    "compiling the training kernels (first run only: 35-70 s on 2 cores; "
    "later runs load them from Numba's cache in about a second)..."
)
SLOW_NOTICES = {
    "cpu": COMPILE_NOTICE,
    "ref": "the NumPy reference backend runs the plain loops: seconds per image...",
    "cudasim": "cudasim runs the CUDA kernels on the CPU, every launch twice (the race check): "
    "2-5 s per 224 x 224 image for tiny on 2 cores, minutes for the large networks...",
}


# Backends whose first pass loads compiled code: the tools run it untimed (Network.warm_up), so
# that their timings are the network's. On the others the first image is simply slow.
WARMED_UP = frozenset({"cpu", "cuda"})


def slow_notice(backend: str) -> str:
    """What to say when the first pass on this backend takes long."""
    return SLOW_NOTICES.get(backend, f"running the first pass on {backend}...")


class _ShowDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            if "%(default)" not in text:
                text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2; shows defaults; --version."""

    def __init__(self, **options) -> None:
        options.setdefault("formatter_class", _ShowDefaults)
        super().__init__(**options)
        self.add_argument(
            "--version", action="version", version=f"{DISTRIBUTION} {__version__}",
            help="print the version and exit",
        )

    def error(self, message: str) -> NoReturn:
        if "--gpu" in message:  # Darknet's option
            message += "; kern picks the GPU with --backend cuda"
        print(f"{self.prog}: {one_line(message, 300)} (see --help)", file=sys.stderr)
        raise SystemExit(2)


@contextmanager
def notice_if_slow(message: str, after: float = 1.5) -> Iterator[None]:
    """Print `message` on stderr if the block is still running `after` seconds from now."""
    timer = threading.Timer(after, lambda: print(message, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def one_line(message: str, limit: int = 1000) -> str:
    """An error message as one line of at most about `limit` characters (paths can hold
    newlines, and quoted user input can be long)."""
    flat = message.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else f"{flat[: limit - 200]} ... {flat[-150:]}"


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI main: KernError -> its message on one line, exit 2; Ctrl-C -> exit quietly."""
    try:
        # Float overflow gives inf or NaN silently, as in Darknet's C; the tools say so in one
        # line where it reaches an output (NumPy would warn on every op of the ref backend).
        with np.errstate(all="ignore"):
            return main(argv)
    except KernError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (a smaller --batch, network or image?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head -n 1` closed our output: stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
