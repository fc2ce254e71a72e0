"""Darknet .weights files: a small header, then every layer's float32 arrays in cfg order.

Header (little-endian): int32 major, minor, revision; then `seen` as int64 when
major*10 + minor >= 2 (and both < 1000), else as int32. Connected-layer weights are stored
transposed ([inputs][outputs]) when major or minor > 1000.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kern.errors import KernError
from nets.files import regular_file_size, write_atomically
from nets.layers import Layer


@dataclass(frozen=True)
class Header:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def transposed(self) -> bool:
        return self.major > 1000 or self.minor > 1000

    @property
    def size(self) -> int:
        return 20 if self.seen_is_64bit else 16


def _describe(layer: Layer) -> str:
    return f"layer {layer.index} ({layer.kind})"


def expected_bytes(layers: Sequence[Layer], header: Header = Header()) -> int:
    """The exact size of a weights file for these layers."""
    return header.size + 4 * sum(spec.count for layer in layers for spec in layer.params())


def read_header(data: bytes, path: str) -> Header:
    if len(data) < 16:
        raise KernError(f"{path}: {len(data)} bytes is too short for a weights header (16 or 20)")
    major, minor, revision = struct.unpack_from("<3i", data)
    header = Header(major, minor, revision, 0)
    if header.seen_is_64bit:
        if len(data) < 20:
            raise KernError(f"{path}: too short for its 20-byte header")
        (seen,) = struct.unpack_from("<q", data, 12)
    else:
        (seen,) = struct.unpack_from("<i", data, 12)
    return Header(major, minor, revision, seen)


def read_weights(path: str | Path, layers: Sequence[Layer]) -> list[dict[str, np.ndarray]]:
    """Every layer's arrays, by name. Fails naming the layer where the file ran out, or the
    number of bytes left over after the last layer (before reading a file that is too long),
    or the layer whose arrays hold NaN, infinities or negative variances."""
    path = str(path)
    size = regular_file_size(path, "weights")
    data = _read_prefix(path, min(size, 20))
    header = read_header(data, path)
    needed = expected_bytes(layers, header)
    if size > needed:
        raise KernError(
            f"{path}: {size - needed} bytes left over after the last layer "
            f"(the cfg needs {needed} bytes, the file has {size}): wrong cfg for these weights?"
        )
    offset = header.size
    for layer in layers:  # sizes first: a file for another cfg fails here, not on its values
        for spec in layer.params():
            if offset + 4 * spec.count > size:
                raise KernError(
                    f"{path}: the file ends in {_describe(layer)}: its {spec.name} need "
                    f"{4 * spec.count} bytes, {size - offset} are left "
                    f"(the cfg needs {needed} bytes, the file has {size})"
                )
            offset += 4 * spec.count
    data = _read_prefix(path, size)
    if len(data) != size:
        raise KernError(f"{path}: the file changed while it was read")
    offset = header.size
    values: list[dict[str, np.ndarray]] = []
    for layer in layers:
        arrays = {}
        for spec in layer.params():
            end = offset + 4 * spec.count
            flat = np.frombuffer(data, dtype="<f4", count=spec.count, offset=offset)
            if not np.isfinite(flat).all():
                raise KernError(f"{path}: {_describe(layer)}: its {spec.name} hold NaN or infinite values")
            if spec.name == "rolling_variance" and (flat < 0).any():
                raise KernError(f"{path}: {_describe(layer)}: its rolling_variance has negative values")
            if spec.transposed_if_flagged and header.transposed:
                array = flat.reshape(spec.shape[::-1]).T
            else:
                array = flat.reshape(spec.shape)
            arrays[spec.name] = np.ascontiguousarray(array, dtype=np.float32)
            offset = end
        values.append(arrays)
    return values


def _read_prefix(path: str, count: int) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(count)
    except OSError as error:
        raise KernError(f"cannot read weights {path}: {error.strerror}") from None


def write_weights(
    path: str | Path, layers: Sequence[Layer], values: Sequence[dict[str, np.ndarray]],
    header: Header = Header(),
) -> None:
    """Write arrays in Darknet's order (the inverse of read_weights), whole or not at all
    (files.write_atomically: a checkpoint being written when training is killed is never
    left truncated)."""

    def write(file) -> None:
        file.write(struct.pack("<3i", header.major, header.minor, header.revision))
        file.write(struct.pack("<q" if header.seen_is_64bit else "<i", header.seen))
        for layer, arrays in zip(layers, values):
            for spec in layer.params():
                array = np.asarray(arrays[spec.name], dtype="<f4").reshape(spec.shape)
                if spec.transposed_if_flagged and header.transposed:
                    array = array.T
                file.write(np.ascontiguousarray(array).tobytes())

    write_atomically(path, write, "weights")


def random_weights(layers: Sequence[Layer], seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded random parameters that keep activations in a sane range through deep networks.

    Weights ~ N(0, 1/fan_in) (variance-preserving); batchnorm scales and variances near 1.
    """
    rng = np.random.default_rng(seed)
    values = []
    for layer in layers:
        arrays = {}
        for spec in layer.params():
            if spec.name == "weights":
                fan_in = spec.count // spec.shape[0]
                array = rng.standard_normal(spec.shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
            elif spec.name in ("scales", "rolling_variance"):
                array = rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
            else:  # biases, rolling_mean
                array = rng.normal(0.0, 0.1, spec.shape).astype(np.float32)
            arrays[spec.name] = array
        values.append(arrays)
    return values


def fresh_weights(layers: Sequence[Layer], seed: int) -> list[dict[str, np.ndarray]]:
    """A network's parameters before training, as Darknet's make_*_layer sets them (seeded by
    kern's generator, not glibc's rand()): convolution weights sqrt(2 / fan_in) * N(0, 1),
    connected weights sqrt(2 / inputs) * U(-1, 1), biases and rolling statistics 0, batchnorm
    scales 1."""
    rng = np.random.default_rng(seed)
    values = []
    for layer in layers:
        arrays = {}
        for spec in layer.params():
            if spec.name == "weights":
                fan_in = spec.count // spec.shape[0]
                scale = np.float32(np.sqrt(2.0 / fan_in))
                if layer.kind == "connected":
                    draw = rng.uniform(-1.0, 1.0, spec.shape).astype(np.float32)
                else:
                    draw = rng.standard_normal(spec.shape, dtype=np.float32)
                arrays[spec.name] = scale * draw
            elif spec.name == "scales":
                arrays[spec.name] = np.ones(spec.shape, dtype=np.float32)
            else:  # biases, rolling_mean, rolling_variance
                arrays[spec.name] = np.zeros(spec.shape, dtype=np.float32)
        values.append(arrays)
    return values


def read_seen(path: str | Path) -> int:
    """The `seen` count (images trained on) in a weights file's header."""
    return read_header(_read_prefix(str(path), 20), str(path)).seen
