"""A .caffemodel's blobs -> the parameters of kern's layers (the recipes of nets/caffe/graph.py),
and seeded random blobs written as a .caffemodel (for tests, timing and teaching).

Folding is done in float64: a convolution's (or inner product's) weights W and bias b, then
for each per-channel layer folded into it, y = a*y + c, so W' = a*W and b' = a*b + c, with
- BatchNorm (blobs mean, variance, factor; Caffe divides both by the factor, 0 meaning 0):
  a = 1/sqrt(variance/factor + eps), c = -a*mean/factor;
- Scale (blobs gamma, and beta where bias_term): a = gamma, c = beta.
A dilated kernel is first spread out, its taps every d-th cell of a kernel of zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kern.errors import KernError
from nets.caffe.graph import CaffeNet
from nets.caffe.proto import message_class, read_caffemodel


def read_blobs(path: str | Path, model: CaffeNet) -> dict[str, list[np.ndarray]]:
    """The blobs of every layer the prototxt gives parameters, by layer name, checked against
    the shapes the prototxt implies (layers of the file that the prototxt lacks are ignored:
    a training snapshot's data and loss layers)."""
    net = read_caffemodel(path)
    stored = {layer.name: layer.blobs for layer in (*net.layer, *net.layers)}
    blobs = {}
    for name, shapes in model.blob_shapes.items():
        if name not in stored:
            raise KernError(f'{path}: no weights for layer "{name}" (the file has {len(stored)} layers, '
                            "matched by name)")
        found = stored[name]
        if len(found) != len(shapes):
            raise KernError(f'{path}: layer "{name}" has {len(found)} blobs, expected {len(shapes)}')
        blobs[name] = [_array(path, name, i, blob, shape) for i, (blob, shape) in enumerate(zip(found, shapes))]
    return blobs


def _array(path: str | Path, name: str, index: int, blob: Any, shape: tuple[int, ...]) -> np.ndarray:
    values = blob.data if len(blob.data) else blob.double_data
    count = int(np.prod(shape))
    if len(values) != count:
        stored = list(blob.shape.dim) or [blob.num, blob.channels, blob.height, blob.width]
        raise KernError(f'{path}: layer "{name}" blob {index} holds {len(values)} values '
                        f"(shape {stored}), expected {count} for shape {list(shape)}")
    return np.array(values, dtype=np.float64).reshape(shape)


def values_from_blobs(model: CaffeNet, blobs: dict[str, list[np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Each kern layer's parameters ("weights" and "biases", or "scale" and "bias"), folded in
    float64 whatever the blobs' type."""
    wide = {name: [np.asarray(blob, dtype=np.float64) for blob in found] for name, found in blobs.items()}
    return [_cook(recipe, wide) for recipe in model.recipes]


def _cook(recipe: tuple[tuple, ...], blobs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    if not recipe:
        return {}
    first, *steps = recipe
    slope = None  # PReLU's, per channel
    if first[0] in ("conv", "ip"):
        _, name, bias_term = first
        weights = blobs[name][0]
        bias = blobs[name][1] if bias_term else np.zeros(weights.shape[0])
    elif first[0] == "average":  # a depthwise convolution that averages k x k windows
        _, size, channels = first
        weights, bias = np.full((channels, 1, size, size), 1.0 / (size * size)), np.zeros(channels)
    else:  # "affine": a standalone per-channel layer, starting from the identity
        weights, bias = np.ones(first[1]), np.zeros(first[1])
    for step in steps:
        if step[0] == "dilate":  # the taps every d-th cell of a kernel of zeros
            _, d_h, d_w = step
            k_h, k_w = weights.shape[2:]
            spread = np.zeros(weights.shape[:2] + (d_h * (k_h - 1) + 1, d_w * (k_w - 1) + 1))
            spread[:, :, ::d_h, ::d_w] = weights
            weights = spread
            continue
        if step[0] == "prelu":
            slope = blobs[step[1]][0].reshape(-1)
            slope = np.full(len(bias), slope[0]) if step[2] else slope
            continue
        a, c = _per_channel(step, blobs)
        weights = weights * a.reshape((-1,) + (1,) * (weights.ndim - 1))
        bias = bias * a + c
    if first[0] == "affine":
        values = {"scale": weights.astype(np.float32), "bias": bias.astype(np.float32)}
        return values if slope is None else {**values, "slope": slope.astype(np.float32)}
    return {"weights": weights.astype(np.float32), "biases": bias.astype(np.float32)}


def _per_channel(step: tuple, blobs: dict[str, list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of y = a*x + c for a BatchNorm or Scale layer."""
    kind, name, option = step
    found = blobs[name]
    if kind == "bn":
        factor = found[2].reshape(-1)[0]
        inverse = 0.0 if factor == 0 else 1.0 / factor
        a = 1.0 / np.sqrt(found[1] * inverse + option)
        return a, -a * found[0] * inverse
    return found[0], found[1] if option else np.zeros_like(found[0])


BLOB_KINDS = {
    "conv": ("weights", "bias"), "ip": ("weights", "bias"), "bn": ("mean", "variance", "factor"),
    "scale": ("gamma", "beta"), "prelu": ("slope",),
}


def random_blobs(model: CaffeNet, seed: int) -> dict[str, list[np.ndarray]]:
    """Seeded blobs of the right shapes that keep activations near unit size through deep nets:
    weights N(0, 1/fan_in), biases and means small, variances and scales near 1; float32."""
    rng = np.random.default_rng(seed)
    steps = (step for recipe in model.recipes for step in recipe)
    kinds = {step[1]: BLOB_KINDS[step[0]] for step in steps if step[0] in BLOB_KINDS}

    def uniform(low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
        return low + (high - low) * rng.random(shape, dtype=np.float32)

    blobs = {}
    for name, shapes in model.blob_shapes.items():
        made = []
        for kind, shape in zip(kinds[name], shapes):
            # float32, as a .caffemodel holds them, and in place: first touches of fresh memory
            # are most of the time here (VGG-16's 138 M weights took 10 s drawn in float64).
            if kind == "weights":
                weights = rng.standard_normal(shape, dtype=np.float32)
                weights /= np.sqrt(np.float32(np.prod(shape[1:])))
                made.append(weights)
            elif kind in ("variance", "gamma", "slope"):
                made.append(uniform(0.5, 1.5, shape))
            elif kind == "factor":
                made.append(uniform(0.5, 2.0, shape))
            else:  # bias, mean, beta
                made.append(uniform(-0.1, 0.1, shape))
        blobs[name] = made
    return blobs


def write_caffemodel(path: str | Path, blobs: dict[str, list[np.ndarray]]) -> None:
    """Blobs by layer name as a binary .caffemodel (V2 layers, blobs with `shape`).

    Written piece by piece, in the order protobuf would serialize them: protobuf encodes the
    small parts (a layer's name, a blob's shape) and the floats go to the file as they lie (an
    encoded message is the concatenation of its encoded fields). Through protobuf the floats
    were copied several times or filled in one Python float at a time (figures: docs/caffe.md)."""
    layer_class, blob_class = message_class("caffe.LayerParameter"), message_class("caffe.BlobProto")
    with open(path, "wb") as out:
        for name, arrays in blobs.items():
            pieces: list[bytes | np.ndarray] = [layer_class(name=name).SerializeToString()]
            for array in arrays:
                data = np.ascontiguousarray(array, dtype="<f4")
                shape = blob_class(shape={"dim": array.shape}).SerializeToString()
                data_head = _varint(PACKED_DATA_FIELD << 3 | 2) + _varint(data.nbytes)
                blob_size = len(data_head) + data.nbytes + len(shape)
                pieces += [_varint(BLOBS_FIELD << 3 | 2) + _varint(blob_size) + data_head, data, shape]
            size = sum(len(piece) if isinstance(piece, bytes) else piece.nbytes for piece in pieces)
            out.write(_varint(LAYER_FIELD << 3 | 2) + _varint(size))
            for piece in pieces:
                out.write(piece)


# Field numbers of caffe.proto, for the parts written by hand (each: a length-delimited field).
LAYER_FIELD = 100  # NetParameter.layer
BLOBS_FIELD = 7  # LayerParameter.blobs
PACKED_DATA_FIELD = 5  # BlobProto.data: repeated float, packed


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
