"""The fork server of tests/test_fuzz.py: runs each case's command line in a child process.

    python tests/fuzz_server.py [--plant BUG] < cases.jsonl > results.jsonl

It imports `nets.predict` and `nets.valid` once, in a fresh interpreter (default warning
filters, no pytest), and never runs a kernel itself, so a forked child starts as a new
`python -m nets.predict ...` would, less the start-up: the child runs the tool's main under
`nets.cli.run` exactly as `python -m` does, with its stdin, stdout and stderr on files of the
case's folder. A crash (a signal), a hang (past the case's time limit: killed) and an exit
status are seen from here. One JSON line in per case, one JSON line out.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import nets.predict
import nets.valid
from nets import cli

TOOLS = {"predict": nets.predict.main, "valid": nets.valid.main}


def child(case: dict) -> int:
    """In the forked child: the tool's main with the case's files as stdin, stdout, stderr."""
    os.chdir(case["cwd"])
    for fd, name, flags in ((0, case.get("stdin") or os.devnull, os.O_RDONLY),
                            (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        os.dup2(os.open(name, flags, 0o644), fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = cli.run(TOOLS[case["tool"]], case["argv"])
    except SystemExit as done:  # argparse: usage errors, --help, --version
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # what `python -m` would show: a traceback, status 1
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run(case: dict) -> dict:
    sys.stdout.flush()  # the child must not inherit unwritten results
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child(case)
        finally:
            os._exit(code)
    deadline = start + case["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"status": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - start}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"status": None, "hang": True, "seconds": time.monotonic() - start}
        time.sleep(0.002)


def plant(name: str) -> None:
    """Put back a bug on purpose (tests/test_fuzz.py shows that the fuzz test catches each):
    two that issue 13 found and fixed, and one of each other kind of failure."""
    import warnings

    import numpy as np
    from PIL import Image

    import kern.cpu
    import nets.image
    import nets.layers
    import nets.network
    from kern.errors import KernError

    if name == "letterbox-sliver":  # a 2 x 1000 image letterboxed to width 0: IndexError
        def letterbox(image, width, height):
            _, in_h, in_w = image.shape
            new_w, new_h = (width, in_h * width // in_w) if width / in_w < height / in_h else (in_w * height // in_h, height)
            boxed = np.full((image.shape[0], height, width), 0.5, dtype=np.float32)
            top, left = (height - new_h) // 2, (width - new_w) // 2
            boxed[:, top : top + new_h, left : left + new_w] = nets.image.resize_image(image, new_w, new_h)
            return boxed

        nets.image.PREPROCESS["letterbox"] = letterbox
    elif name == "decoder-errors":  # only OSError and ValueError caught, as before issue 13
        def load_image(path):
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as error:
                raise KernError(f"{path}: cannot read image: {error}") from None
            return np.ascontiguousarray((pixels / np.float32(255)).transpose(2, 0, 1))

        nets.predict.load_image = nets.valid.load_image = load_image
    elif name == "negative-padding":  # neither the cfg nor the backend checks padding
        nets.layers._not_negative = lambda section, key, default: section.integer(key, default)
        kern.cpu._check_window = lambda size, stride, padding: None
    elif name == "hang":
        original = nets.predict.load_image
        nets.predict.load_image = lambda path: time.sleep(3600) if "grey" in str(path) else original(path)
    elif name == "warning":
        original = nets.predict.load_image
        nets.predict.load_image = lambda path: warnings.warn("planted", UserWarning, stacklevel=2) or original(path)
    elif name == "nan-output":  # NaN scores and no check of them
        nets.network.Network.predict = lambda self, images: np.full((len(images), self.spec.outputs), np.nan)
        nets.predict.np = type("NoCheck", (), {"isfinite": staticmethod(lambda a: np.ones(1, bool))})
    elif name == "two-line-error":
        cli.one_line = lambda message, limit=1000: message + "\n  (a second line)"
    else:
        raise SystemExit(f"unknown plant {name}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--plant":
        plant(sys.argv[2])
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
