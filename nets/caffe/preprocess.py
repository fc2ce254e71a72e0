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
from nets.image import resize_image

IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)  # BVLC's ilsvrc_2012_mean, per channel
RESIZE = 256


def caffe_input(
    image: np.ndarray, width: int, height: int, mean: tuple[float, float, float] = IMAGENET_MEAN_BGR,
    scale: float = 1.0, resize: int = RESIZE,
) -> np.ndarray:
    """An RGB image in [0, 1], (3, H, W) -> Caffe's input (3, height, width): resized to
    resize x resize (bilinear), the centre cropped, BGR, (255 * value - mean[c]) * scale."""
    side_w, side_h = max(resize, width), max(resize, height)
    resized = resize_image(image, side_w, side_h)
    top, left = (side_h - height) // 2, (side_w - width) // 2
    crop = resized[::-1, top : top + height, left : left + width]
    means = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    return ((crop * np.float32(255) - means) * np.float32(scale)).astype(np.float32)


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
        synsets = read_lines(DEFAULT_LABELS, "labels list")
        names = read_lines(SHIPPED / "data" / "imagenet.shortnames.list", "names list")[:1000]
        return [name for _, name in sorted(zip(synsets, names))]
    return [f"class {i}" for i in range(classes)]
