"""Caffe models on kern: a deploy .prototxt (nets/caffe/graph.py translates it into kern's
layers) and a .caffemodel (nets/caffe/blobs.py reads and folds its blobs). protobuf, the
`kern-nn[caffe]` extra, is imported only here (nets/caffe/proto.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nets.caffe.blobs import random_blobs, read_blobs, values_from_blobs
from nets.caffe.graph import CaffeNet, translate
from nets.caffe.proto import parse_prototxt, read_prototxt_text

__all__ = ["CaffeNet", "caffe_values", "read_net"]


def read_net(path: str | Path) -> CaffeNet:
    """A deploy .prototxt, translated (shapes checked; no weights)."""
    text = read_prototxt_text(path)  # read once: parsed, and searched for each layer's line
    return translate(parse_prototxt(text, path), path, text)


def caffe_values(
    model: CaffeNet, weights: str | Path | None, random_seed: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Each kern layer's parameters: from a .caffemodel, or seeded random blobs."""
    blobs = random_blobs(model, random_seed) if weights is None else read_blobs(weights, model)
    return values_from_blobs(model, blobs)
