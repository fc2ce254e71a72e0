"""One line on stderr before each step of a long benchmark: what it runs now, how long the
run has taken so far and, from the steps done, about how long is left."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def step(self, label: str) -> None:
        """Say that step `label` starts now."""
        elapsed = time.perf_counter() - self.start
        left = f", about {elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
        line = f"[{self.done + 1}/{self.total}] {label} ({elapsed:.0f} s so far{left})"
        print(line, file=sys.stderr, flush=True)
        self.done += 1
