"""Numba's cache keys a compiled kernel on its own file's timestamp only. A kernel that inlines
a function of another file (activation.py's activate8, simd.py's vector ops) or reads a
constant frozen at compile time is loaded stale after that other file changes: after tanh was
added to activation.py, gemm.py's cached kernels ran it as linear. So before any kernel loads,
the sources they depend on are hashed and compared with the hash recorded beside the cache;
where they differ, the cached kernels are dropped (and compiled again at their next call)."""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = (*sorted(HERE.glob("*.py")), HERE.parent / "params.py")
STAMP = "kern-sources.sha256"


def drop_stale_kernels(sources: tuple[Path, ...] = SOURCES, cache: Path = HERE / "__pycache__") -> bool:
    """Delete Numba's cache files (*.nbi, *.nbc) in `cache` unless they were compiled from these
    very sources; True if it deleted them. Where the folder cannot be written (a read-only
    install: Numba then caches in a per-user folder, docs/numba.md), nothing is done."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()
    stamp = cache / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for compiled in (*cache.glob("*.nbi"), *cache.glob("*.nbc")):
            compiled.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:
        return False
    return True
