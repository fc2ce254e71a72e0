"""The fork server of tests/test_fuzz.py: runs each case's command line in a child process.

    python tests/fuzz_server.py < cases.jsonl > results.jsonl

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


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
