"""Where the CPU ops get their arrays: new ones, or those a training pass lends again.

A NumPy array of megabytes is mapped afresh by the C library and given back when freed, and
the operating system faults in each of its 4 KB pages the first time it is touched: 600 to
13,000 page faults and 12-57 ms of system time per cifar_small training step at batch 128
(2 threads, AMD EPYC Zen 3; `resource.getrusage` around `train_batch`). Every pass of a
network asks for the same arrays in the same order, so PassBuffers keeps them: after the
first pass a training step maps nothing. (The inference backend has its arena instead,
nets/memory.py.)

An op that takes `empty` calls it for each array it needs, as `empty(shape, dtype)`: an
uninitialized C-contiguous array, 64-byte aligned for float32. `new_array` allocates;
`PassBuffers.empty` lends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from numpy.typing import DTypeLike

from kern.cpu.simd import aligned_empty

Empty = Callable[..., np.ndarray]  # empty(shape, dtype=np.float32) -> an uninitialized array


def new_array(shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
    """A new uninitialized array (float32 ones start on a cache line)."""
    if np.dtype(dtype) == np.float32:
        size = int(np.prod(shape))
        return aligned_empty(max(size, 1))[:size].reshape(shape)
    return np.empty(shape, dtype=dtype)


class PassBuffers:
    """Arrays lent to one training pass, lent again to the next.

    `empty` lends a free array of as many 4-byte items (seen as `shape` and a 4-byte dtype),
    or a new one; `new_pass` takes back every array lent since the last call: the pass that
    used them is over, and nothing may read them any more. The next pass, asking for the same
    sizes in the same order, gets the same arrays. Arrays of other item sizes are new each
    time (the float64 partial sums: small). An op's scratch (padded copies, the weight
    gradient's sums) comes from `scratch`, given back as the op ends, for the next op to use."""

    def __init__(self) -> None:
        self._free: dict[int, list[np.ndarray]] = {}
        self._lent: dict[int, np.ndarray] = {}  # address -> the flat array lent there

    def empty(self, shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype.itemsize != 4:
            return new_array(shape, dtype)
        size = int(np.prod(shape))
        free = self._free.get(size)
        flat = free.pop() if free else new_array((size,))
        self._lent[flat.ctypes.data] = flat
        return flat.view(dtype).reshape(shape)

    def give_back(self, array: np.ndarray) -> None:
        """An array this pass no longer needs is free again now (arrays not lent: ignored)."""
        flat = self._lent.pop(array.ctypes.data, None)
        if flat is not None:
            self._free.setdefault(flat.size, []).append(flat)

    @contextmanager
    def scratch(self) -> Iterator[Empty]:
        """An `empty` for an op's scratch: what it lends is free again when the block ends."""
        lent: list[np.ndarray] = []

        def empty(shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
            lent.append(self.empty(shape, dtype))
            return lent[-1]

        try:
            yield empty
        finally:
            for array in lent:
                self.give_back(array)

    def new_pass(self) -> None:
        """Every array lent so far is free again."""
        for flat in self._lent.values():
            self._free.setdefault(flat.size, []).append(flat)
        self._lent.clear()
