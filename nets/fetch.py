"""Finding a cfg's weights on disk, and fetching Darknet's published ones on request."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from kern.errors import KernError
from nets.data import WEIGHTS_DIR, find_cfg
from nets.layers import Layer
from nets.weights import Header, expected_bytes

DARKNET_URL = "https://data.pjreddie.com/files/{name}.weights"
# Shipped cfgs whose weights Darknet does not publish: one trains them (nets.train).
TRAIN_YOURSELF = frozenset({"cifar", "cifar_small"})


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kern"


def candidates(cfg: Path, cache: Path) -> list[Path]:
    """Where to look for <cfg name>.weights: beside the cfg, the shipped weights/, the working
    directory, the cache."""
    name = cfg.stem + ".weights"
    places = [cfg.with_suffix(".weights"), WEIGHTS_DIR / name, Path.cwd() / name, cache / name]
    return list(dict.fromkeys(p.resolve() for p in places))


def find_weights(cfg: Path, cache: Path) -> Path | None:
    return next((p for p in candidates(cfg, cache) if p.is_file()), None)


def named_weights(given: str) -> Path | None:
    """Weights given by a name rather than a path ("tiny", "tiny.weights"): where predict
    finds that cfg's weights; None if `given` is a file or names none found."""
    path = Path(given)
    if path.exists() or path.parent != Path("."):
        return None
    cfg = find_cfg(path.stem if path.suffix == ".weights" else path.name)
    return find_weights(cfg, cache_dir()) if cfg.is_file() else None


def locate_weights(
    cfg: Path, layers: Sequence[Layer], fetch_missing: bool = False, url: str | None = None
) -> Path:
    """<cfg name>.weights where find_weights finds it, else downloaded into the cache if
    `fetch_missing`, else a KernError saying where Darknet publishes it."""
    cache = cache_dir()
    weights = find_weights(cfg, cache)
    if weights is None and fetch_missing:
        weights = download(url or DARKNET_URL.format(name=cfg.stem), cache / f"{cfg.stem}.weights", layers)
    if weights is None:
        raise KernError(not_found_message(cfg, cache, layers))
    return weights


def not_found_message(cfg: Path, cache: Path, layers: Sequence[Layer]) -> str:
    url = DARKNET_URL.format(name=cfg.stem)
    looked = ", ".join(str(p) for p in candidates(cfg, cache))
    if cfg.stem in TRAIN_YOURSELF:
        return (
            f"no weights for {cfg} (looked in {looked}); Darknet publishes none for it: train them with "
            f"python -m nets.train DATA {cfg.stem} (docs/training.md), or pass the file"
        )
    return (
        f"no weights for {cfg} (looked in {looked}); Darknet publishes them at {url} "
        f"({expected_bytes(layers) / 1e6:.1f} MB): add --download to fetch them into {cache}, "
        f"or pass the file: python -m nets.predict {cfg} PATH.weights "
        f"(or --random-weights to time the network)"
    )


def download(
    url: str, destination: Path, layers: Sequence[Layer], progress: TextIO = sys.stderr
) -> Path:
    """Fetch url to destination with a progress bar; the size must be what the cfg implies."""
    sizes = {expected_bytes(layers, Header(0, 1)), expected_bytes(layers, Header(0, 2))}
    wanted = " or ".join(str(s) for s in sorted(sizes))
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0)
            if total and total not in sizes:
                raise KernError(f"{url}: {total} bytes, but the cfg needs {wanted}: not these weights")
            received = 0
            with open(partial, "wb") as file:
                while chunk := response.read(1 << 20):
                    file.write(chunk)
                    received += len(chunk)
                    _show_progress(progress, destination.name, received, total)
            print(file=progress)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise KernError(f"cannot download {url}: {getattr(error, 'reason', None) or error}") from None
    if received not in sizes:
        partial.unlink(missing_ok=True)
        raise KernError(f"{url}: got {received} bytes, but the cfg needs {wanted}")
    partial.replace(destination)
    return destination


def _show_progress(stream: TextIO, name: str, received: int, total: int) -> None:
    if total:
        filled = 30 * received // total
        bar = "#" * filled + "." * (30 - filled)
        line = f"{name} [{bar}] {100 * received / total:5.1f}% {received / 1e6:.1f}/{total / 1e6:.1f} MB"
    else:
        line = f"{name} {received / 1e6:.1f} MB"
    print("\r" + line, end="", file=stream, flush=True)
