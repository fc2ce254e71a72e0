"""Which files are Caffe's (no protobuf needed to ask)."""

from __future__ import annotations

from pathlib import Path


def is_prototxt(path: str | Path) -> bool:
    return str(path).endswith(".prototxt")


def is_caffemodel(path: str | Path) -> bool:
    return str(path).endswith(".caffemodel")
