"""Caffe's preprocessing and label order, which differ from Darknet's (docs/caffe.md).

Caffe's ImageNet models take BGR images of 0-255 values minus a per-channel mean, resized to
256 x 256 (the aspect ratio not kept) and centre-cropped to the input size: what Caffe's
`classification.cpp` and Yahoo's open_nsfw script do. Their 1000 classes are in sorted synset
order (Caffe's synset_words.txt), not Darknet's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kern.errors import KernError
from nets.data import DEFAULT_LABELS, SHIPPED, read_lines
from nets.image import IMAGENET_MEAN_BGR, caffe_input

__all__ = ["IMAGENET_MEAN_BGR", "caffe_input", "caffe_labels", "caffe_synsets", "parse_mean", "read_mean"]

def read_mean(path: str | Path) -> tuple[float, float, float]:
    """A mean.binaryproto (a BlobProto of 1 x 3 x H x W) -> its per-channel means, as
    classification.cpp takes them."""
    from nets.caffe.proto import message_class

    blob = message_class("caffe.BlobProto")()
    try:
        blob.ParseFromString(Path(path).read_bytes())
    except OSError as error:
        raise KernError(f"{path}: cannot read: {error.strerror or error}") from None
    except Exception as error:  # protobuf's DecodeError
        raise KernError(f"{path}: not a Caffe mean .binaryproto: {error}") from None
    values = np.asarray(blob.data, dtype=np.float64)
    if values.size == 0 or values.size % 3:
        raise KernError(f"{path}: expected a 3-channel mean image, found {values.size} values")
    return tuple(float(m) for m in values.reshape(3, -1).mean(axis=1))  # type: ignore[return-value]


def parse_mean(text: str) -> tuple[float, float, float]:
    """--mean: B,G,R values, or a .binaryproto file."""
    if text.endswith(".binaryproto"):
        return read_mean(text)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise KernError(f"--mean {text}: expected B,G,R (three numbers) or a mean .binaryproto file")
    return values  # type: ignore[return-value]


def caffe_labels(classes: int, labels: str | Path | None = None) -> list[str]:
    """Class names in Caffe's order: a labels file (one per line) where given; for 1000 classes
    ImageNet's in sorted synset order; else "class 0", "class 1", ..."""
    if labels is not None:
        names = read_lines(labels, "labels list")
        if len(names) < classes:
            raise KernError(f"{labels}: has {len(names)} names, the network has {classes} outputs")
        return names[:classes]
    if classes == 1000:
        synsets = read_lines(DEFAULT_LABELS, "labels list")[:1000]
        names = read_lines(SHIPPED / "data" / "imagenet.shortnames.list", "names list")[:1000]
        return [name for _, name in sorted(zip(synsets, names))]
    return [f"class {i}" for i in range(classes)]


def caffe_synsets() -> list[str]:
    """ImageNet's 1000 synset ids in Caffe's output order (sorted): what nets.valid finds in paths."""
    return sorted(read_lines(DEFAULT_LABELS, "labels list")[:1000])
