"""Darknet's own training step, as a test oracle: Debian's `darknet` package's libdarknet.so,
called through ctypes in a child process (Darknet prints freely and exits on errors).

    python tests/darknet_oracle.py CFG WEIGHTS_IN INPUTS.npz WEIGHTS_OUT
    python tests/darknet_oracle.py predict CFG WEIGHTS IMAGES.npy OUTPUTS.npy

INPUTS.npz holds `images` (steps, batch, C, H, W) float32, `labels` (steps, batch) and
`classes`; each step is one call of Darknet's train_network (all its subdivisions and one
update). The losses it returned are printed, one per line. `predict` runs Darknet's
network_predict on each image of IMAGES.npy (N, C, H, W) and saves the outputs. Not part of kern: it needs
`apt-get install darknet`, and tests that use it skip without it.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

LIBRARY = Path("/usr/lib/darknet/libdarknet.so")


class Matrix(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int), ("cols", ctypes.c_int), ("vals", ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))]


class Data(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_int), ("h", ctypes.c_int), ("X", Matrix), ("y", Matrix), ("shallow", ctypes.c_int),
        ("num_boxes", ctypes.c_void_p), ("boxes", ctypes.c_void_p),
    ]


def matrix(rows: np.ndarray) -> tuple[Matrix, list]:
    rows = [np.ascontiguousarray(row, dtype=np.float32) for row in rows]
    pointers = (ctypes.POINTER(ctypes.c_float) * len(rows))(
        *[row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for row in rows]
    )
    return Matrix(len(rows), rows[0].size, pointers), [rows, pointers]


def main(cfg: str, weights_in: str, inputs: str, weights_out: str) -> None:
    lib = ctypes.CDLL(str(LIBRARY))
    lib.load_network.restype = ctypes.c_void_p
    lib.load_network.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    lib.train_network.restype = ctypes.c_float
    lib.train_network.argtypes = [ctypes.c_void_p, Data]
    lib.save_weights.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    net = lib.load_network(cfg.encode(), weights_in.encode(), 0)
    with np.load(inputs) as data:
        images, labels, classes = data["images"], data["labels"], int(data["classes"])
    for step_images, step_labels in zip(images, labels):
        x, keep_x = matrix(step_images.reshape(len(step_images), -1))
        y, keep_y = matrix(np.eye(classes, dtype=np.float32)[step_labels])
        loss = lib.train_network(net, Data(0, 0, x, y, 0, None, None))
        print(f"{loss:.9g}", flush=True)
        del keep_x, keep_y
    lib.save_weights(net, weights_out.encode())


def predict(cfg: str, weights: str, images: str, outputs: str) -> None:
    lib = ctypes.CDLL(str(LIBRARY))
    lib.load_network.restype = ctypes.c_void_p
    lib.load_network.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    lib.network_predict.restype = ctypes.POINTER(ctypes.c_float)
    lib.network_predict.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)]
    lib.network_outputs.restype = ctypes.c_int
    lib.network_outputs.argtypes = [ctypes.c_void_p]
    lib.set_batch_network.argtypes = [ctypes.c_void_p, ctypes.c_int]
    net = lib.load_network(cfg.encode(), weights.encode(), 0)
    lib.set_batch_network(net, 1)
    count = lib.network_outputs(net)
    results = []
    for image in np.load(images):
        x = np.ascontiguousarray(image, dtype=np.float32)
        y = lib.network_predict(net, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        results.append(np.ctypeslib.as_array(y, (count,)).copy())
    np.save(outputs, np.stack(results))


if __name__ == "__main__":
    if sys.argv[1] == "predict":
        predict(*sys.argv[2:6])
    else:
        main(*sys.argv[1:5])
