"""The part of CuPy that kern/cuda/backend.py uses, on the CPU: device arrays and RawModule.

- Device memory: every allocation is an anonymous mapping whose data ends exactly where a
  guard page (no access) begins, so a kernel that reads or writes past the end of an array
  faults, and the fault is reported as "N bytes past the end of argument k (name)". New
  arrays (`empty`) are filled with NaN bytes: an element no kernel wrote shows up as NaN.
- RawModule(code, options).get_function(name)(grid, block, args, shared_mem=0) compiles the
  CUDA C with kern/cudasim/compiler.py and launches through cudasim_launch. Each argument is
  checked against the kernel's parameter: CuPy turns a Python float into a double and a Python
  int into a 64-bit integer, which a kernel taking `float` or `int` would misread; here they
  are refused. CUDA's launch limits are checked.
- Races: every launch runs twice, its threads and blocks in forward and then in reverse order,
  from the same inputs; the arrays it was given must come out byte for byte the same.
  KERN_CUDASIM_ORDERS=1 runs forward only (half the time; no race check).
- Views (slices, reshapes) share their array's memory, as in CuPy; the guard page is at the
  end of the whole allocation (an arena's views are checked only at the arena's end).
- Streams and graphs: launches (and device copies: `copyto`, assignment) on a stream between
  `begin_capture` and `end_capture` are recorded, not run; `Graph.launch` runs them in order.
  While a stream captures, what a GPU would leave out of the graph or refuse is an error: an
  allocation (the graph would keep that one buffer), a copy between host and device, and a
  launch or copy on any other stream (the null stream included).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kern.cudasim.compiler import Kernel, build, kernels_of, source_line, static_shared_bytes

float32 = np.float32
int32 = np.int32
PAGE = mmap.PAGESIZE
MAX_THREADS = 1024
MAX_STATIC_SHARED = 48 * 1024
SIGNALS = {11: "invalid memory access", 7: "bus error", 4: "out-of-bounds index", 8: "arithmetic fault"}


class CudasimError(Exception):
    """A kernel bug found by cudasim: names the kernel, block, thread and, where known, the line.
    Not a RuntimeError: the CUDA backend's fallback for a capture the driver refuses must not
    swallow it."""


class Allocation:
    """`nbytes` of memory that end where a guard page begins, with a guard page before them
    too; the bytes between that page and the array are 0xff (a NaN as float32, -1 as int), so
    a read just before the array gives garbage that shows, and one further off faults."""

    def __init__(self, nbytes: int) -> None:
        _refuse_while_capturing(
            f"an allocation of {nbytes} bytes",
            "the graph would keep this one buffer, and CuPy's pool may give it to another array once it is "
            "freed: allocate before capture (planned memory)",
        )
        self.nbytes = nbytes
        data_pages = -(-max(nbytes, 1) // PAGE) * PAGE
        self.map = mmap.mmap(-1, PAGE + data_pages + PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.end = base + PAGE + data_pages
        self.start = self.end - nbytes
        self.offset = PAGE + data_pages - nbytes
        self.map[PAGE : self.offset] = b"\xff" * (self.offset - PAGE)
        for guard in (base, self.end):
            if _libc.mprotect(ctypes.c_void_p(guard), ctypes.c_size_t(PAGE), 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(self.map, dtype=dtype, count=count, offset=self.offset).reshape(shape)


_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class MemoryPointer:
    ptr: int


class ndarray:
    """A device array: host memory behind a guard page, or a view of another device array."""

    def __init__(
        self, shape: tuple[int, ...], dtype: Any = np.float32, *, allocation: Allocation | None = None,
        host: np.ndarray | None = None,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape))
        self.allocation = allocation or Allocation(self.size * self.dtype.itemsize)
        # The same memory, as NumPy (a view with strides for a slice).
        self.host = self.allocation.view(self.dtype, self.shape) if host is None else host

    def _view(self, host: np.ndarray) -> ndarray:
        return ndarray(host.shape, host.dtype, allocation=self.allocation, host=host)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        return self.host.strides

    @property
    def data_ptr(self) -> int:
        return self.host.ctypes.data

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self.data_ptr)

    @property
    def flags_c_contiguous(self) -> bool:
        return self.host.flags.c_contiguous

    def span(self) -> np.ndarray:
        """The bytes from this array's first element to its last (what a kernel may write)."""
        extent = self.dtype.itemsize + sum((n - 1) * s for n, s in zip(self.shape, self.host.strides))
        start = self.data_ptr - (self.allocation.end - len(self.allocation.map) + PAGE)
        return np.frombuffer(self.allocation.map, np.uint8, count=max(extent, 0), offset=start)

    def set(self, host: np.ndarray) -> None:
        """Host to device (CuPy's ndarray.set): same shape and dtype."""
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(f"set: {host.shape} {host.dtype} into {self.shape} {self.dtype}")
        _refuse_while_capturing("a copy from the host (ndarray.set)", HOST_COPY)
        self.host[...] = host

    def __getitem__(self, key: Any) -> ndarray:
        return self._view(self.host[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, np.ndarray):
            _refuse_while_capturing("a copy from the host (assignment of a NumPy array)", HOST_COPY)
        source = value.host if isinstance(value, ndarray) else value
        on_current_stream(lambda: self.host.__setitem__(key, source), "an assignment")

    def reshape(self, *shape: Any) -> ndarray:
        if len(shape) == 1 and isinstance(shape[0], tuple):
            shape = shape[0]
        return self._view(np.reshape(self.host, shape, copy=False))  # a view, or an error

    def __repr__(self) -> str:
        return f"cudasim.ndarray(shape={self.shape}, dtype={self.dtype})"


def empty(shape: Any, dtype: Any = np.float32) -> ndarray:
    """Poisoned: every byte 0xff (NaN as float32)."""
    array = ndarray(shape if isinstance(shape, tuple) else (shape,), dtype)
    array.host.view(np.uint8).reshape(-1)[:] = 0xFF
    return array


def zeros(shape: Any, dtype: Any = np.float32) -> ndarray:
    array = ndarray(shape if isinstance(shape, tuple) else (shape,), dtype)
    array.host[...] = 0
    return array


def empty_like(other: ndarray) -> ndarray:
    return empty(other.shape, other.dtype)


def asarray(x: Any, dtype: Any = None) -> ndarray:
    if isinstance(x, ndarray) and (dtype is None or np.dtype(dtype) == x.dtype):
        return x
    host = np.ascontiguousarray(x.host if isinstance(x, ndarray) else x, dtype=dtype)
    array = ndarray(host.shape, host.dtype)
    array.host[...] = host
    return array


def ascontiguousarray(x: Any, dtype: Any = None) -> ndarray:
    if isinstance(x, ndarray) and not x.flags_c_contiguous:
        x = asarray(x.host)  # a copy
    return asarray(x, dtype)


def copyto(dst: ndarray, src: ndarray) -> None:
    """A device copy: CuPy launches a kernel for it, on the current stream."""
    on_current_stream(lambda: dst.host.__setitem__(Ellipsis, src.host), "copyto")


def asnumpy(x: ndarray) -> np.ndarray:
    _refuse_while_capturing("a copy to the host (asnumpy)", HOST_COPY)
    return np.array(x.host, copy=True)


class _Runtime:
    class CUDARuntimeError(RuntimeError):
        pass

    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802 - CuPy's name
        return 1


class Graph:
    """A recorded list of launches (CuPy's cupy.cuda.graph.Graph)."""

    def __init__(self, launches: list) -> None:
        self.launches = launches

    def launch(self, stream: Stream | None = None) -> None:
        for launch in self.launches:
            launch()


class Stream:
    """CuPy's Stream: `with stream:` makes it current; capture records launches."""

    _current: list[Stream] = []  # CuPy's current-stream stack (the null stream when empty)
    capturing: Stream | None = None  # the stream capturing a graph, if one is

    def __init__(self, non_blocking: bool = False) -> None:
        self.recording: list | None = None

    def __enter__(self) -> Stream:
        Stream._current.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        Stream._current.pop()

    def begin_capture(self) -> None:
        if Stream.capturing is not None:
            raise CudasimError("begin_capture: a stream is already capturing")
        self.recording = []
        Stream.capturing = self

    def end_capture(self) -> Graph:
        if self.recording is None:
            raise CudasimError("end_capture: this stream is not capturing")
        graph, self.recording = Graph(self.recording), None
        Stream.capturing = None
        return graph

    def synchronize(self) -> None:
        pass


_NULL_STREAM = Stream()


def get_current_stream() -> Stream:
    return Stream._current[-1] if Stream._current else _NULL_STREAM


HOST_COPY = "CUDA refuses a synchronous copy while a stream captures, and a graph would not repeat it"


def _refuse_while_capturing(what: str, why: str) -> None:
    if Stream.capturing is not None:
        raise CudasimError(f"{what} while a stream captures a CUDA graph: {why}")


def on_current_stream(run: Any, what: str) -> None:
    """Run a launch or device copy now, or record it where the current stream captures. On
    another stream while one captures it is an error: the null stream's work fails the capture
    on a GPU (cudaErrorStreamCaptureImplicit), another stream's runs at once, outside the
    graph and unordered with it."""
    stream = get_current_stream()
    if Stream.capturing is None:
        run()
    elif stream is Stream.capturing:
        stream.recording.append(run)
    else:
        which = "the null stream" if stream is _NULL_STREAM else "a stream that is not capturing"
        raise CudasimError(f"{what} on {which} while another stream captures a CUDA graph: launch "
                           "inside `with stream:` of the capturing stream")


class cuda:  # noqa: N801 - CuPy's name
    runtime = _Runtime
    Stream = Stream
    get_current_stream = staticmethod(get_current_stream)


@dataclass
class _Library:
    path: Path
    handle: ctypes.CDLL
    kernels: dict[str, Kernel]
    shared: dict[str, int]


class RawModule:
    """CuPy's RawModule: CUDA C compiled once (cudasim: by the C++ compiler, cached on disk)."""

    def __init__(self, code: str, options: tuple[str, ...] = (), name: str = "module.cu") -> None:
        name = _source_name(code, name)
        path = build(code, name, tuple(o for o in options if o.startswith(("-I", "-D"))))
        handle = ctypes.CDLL(str(path))
        handle.cudasim_launch.restype = ctypes.c_int
        self.library = _Library(path, handle, {k.name: k for k in kernels_of(code)}, static_shared_bytes(path))
        self.name = name
        # One Function per kernel, as a GPU has one function handle: an attribute set on it
        # (max_dynamic_shared_size_bytes) holds for later launches, and the symbols are looked
        # up once, not per launch.
        self._functions: dict[str, Function] = {}

    def get_function(self, name: str) -> Function:
        if name not in self.library.kernels:
            raise AttributeError(f"cudasim: no kernel {name!r} in {self.name}")
        if name not in self._functions:
            self._functions[name] = Function(self.library, self.library.kernels[name], self.name)
        return self._functions[name]


def _source_name(code: str, default: str) -> str:
    """The .cu file this code came from, for messages (its first comment names no file: use
    the kern/cuda file with the same text, else the default)."""
    folder = Path(__file__).resolve().parent.parent / "cuda"
    for path in sorted(folder.glob("*.cu")):
        if code.startswith(path.read_text()):  # the backend appends its headers' hash
            return path.name
    return default


class Function:
    def __init__(self, library: _Library, kernel: Kernel, source: str) -> None:
        self.library, self.kernel, self.source = library, kernel, source
        self.address = ctypes.cast(getattr(library.handle, f"__cudasim_call_{kernel.name}"), ctypes.c_void_p)
        self.bounds = None  # __launch_bounds__: the most threads a block of this kernel may have
        if kernel.bounds:
            self.bounds = ctypes.c_int.in_dll(library.handle, f"__cudasim_bounds_{kernel.name}").value
        # CuPy's Function attribute: dynamic shared memory over 48 KiB needs this raised first
        # (cudaFuncAttributeMaxDynamicSharedMemorySize), or the launch fails on a GPU.
        self.max_dynamic_shared_size_bytes = MAX_STATIC_SHARED

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        grid3, block3 = _dims(grid), _dims(block)
        self._check_limits(grid3, block3, shared_mem)
        packed = self._pack(args)  # mistyped arguments are refused now, also when recording
        # Under stream capture: run when the graph is launched.
        on_current_stream(lambda: self._run(grid3, block3, shared_mem, args, packed), self.kernel.name)

    def _run(self, grid3, block3, shared_mem: int, args: tuple, packed: tuple[Any, list]) -> None:
        values, _alive = packed  # _alive: the ctypes objects `values` points into
        arrays = [a for a in args if isinstance(a, ndarray)]
        orders = 1 if os.environ.get("KERN_CUDASIM_ORDERS") == "1" else 2
        if orders == 1:
            self._launch(grid3, block3, shared_mem, values, reverse=False, args=args)
            return
        spans = [a.span() for a in arrays]
        before = [span.copy() for span in spans]
        self._launch(grid3, block3, shared_mem, values, reverse=False, args=args)
        forward = [span.copy() for span in spans]
        for span, saved in zip(spans, before):
            span[...] = saved
        self._launch(grid3, block3, shared_mem, values, reverse=True, args=args)
        for array, span, first in zip(arrays, spans, forward):
            if not np.array_equal(span, first):
                element = int(np.flatnonzero(span != first)[0]) // array.dtype.itemsize
                now, then = span.view(array.dtype)[element], first.view(array.dtype)[element]
                position = [i for i, a in enumerate(args) if a is array][0]
                raise CudasimError(
                    f"{self.kernel.name} ({self.source}): a race: argument {position} "
                    f"({self.kernel.params[position].name}) differs at element {element} between "
                    f"threads run in forward and in reverse order ({then} vs {now}): a missing "
                    "__syncthreads?"
                )

    def _check_limits(self, grid: tuple[int, int, int], block: tuple[int, int, int], shared: int) -> None:
        name = self.kernel.name
        threads = block[0] * block[1] * block[2]
        if not 1 <= threads <= MAX_THREADS or block[2] > 64 or min(block) < 1:
            raise CudasimError(f"{name}: block {block}: at most {MAX_THREADS} threads (z <= 64), at least 1")
        if not 1 <= grid[0] < 2**31 or not 1 <= grid[1] <= 65535 or not 1 <= grid[2] <= 65535:
            raise CudasimError(f"{name}: grid {grid}: x in 1..2^31-1, y and z in 1..65535")
        if self.bounds is not None and threads > self.bounds:
            raise CudasimError(f"{name}: block {block}: {threads} threads > __launch_bounds__ {self.bounds}")
        if shared > max(self.max_dynamic_shared_size_bytes, MAX_STATIC_SHARED):
            raise CudasimError(
                f"{name}: {shared} bytes of dynamic shared memory: over 48 KiB needs "
                "max_dynamic_shared_size_bytes raised first (cudaFuncSetAttribute)"
            )
        static = self.library.shared.get(name, 0)
        if static > MAX_STATIC_SHARED:
            raise CudasimError(f"{name}: {static} bytes of static __shared__ memory, more than 48 KiB")
        if static + shared > 227 * 1024:
            raise CudasimError(f"{name}: {static + shared} bytes of shared memory, more than a Hopper SM has")

    def _pack(self, args: tuple) -> tuple[Any, list]:
        params = self.kernel.params
        if len(args) != len(params):
            raise CudasimError(f"{self.kernel.name}: {len(args)} arguments for {len(params)} parameters")
        keep, pointers = [], (ctypes.c_void_p * len(args))()
        for i, (arg, param) in enumerate(zip(args, params)):
            where = f"{self.kernel.name}: argument {i} ({param.ctype} {param.name})"
            if param.pointer:
                if not isinstance(arg, ndarray):
                    raise CudasimError(f"{where}: expected a device array, got {type(arg).__name__}")
                if param.dtype != "void" and arg.dtype != np.dtype(param.dtype):
                    raise CudasimError(f"{where}: expected a {param.dtype} array, got {arg.dtype}")
                value = ctypes.c_void_p(arg.data_ptr)
            else:
                if isinstance(arg, (bool, int, float)) and not isinstance(arg, np.generic):
                    cupy_type = "a double" if isinstance(arg, float) else "a 64-bit integer"
                    raise CudasimError(
                        f"{where}: a Python {type(arg).__name__} is passed as {cupy_type} by CuPy, which "
                        f"this kernel would misread: pass numpy.{param.dtype}"
                    )
                if not isinstance(arg, np.generic) or arg.dtype != np.dtype(param.dtype):
                    raise CudasimError(f"{where}: expected numpy.{param.dtype}, got {type(arg).__name__}")
                value = np.ctypeslib.as_ctypes(np.array(arg))
            keep.append(value)
            pointers[i] = ctypes.cast(ctypes.pointer(value), ctypes.c_void_p)
        return pointers, keep

    def _launch(self, grid, block, shared, values, reverse: bool, args: tuple) -> None:
        error = ctypes.create_string_buffer(1024)
        fault = (ctypes.c_longlong * 10)()
        status = self.library.handle.cudasim_launch(
            self.address, values, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
            ctypes.c_size_t(shared), int(reverse), error, ctypes.c_size_t(len(error)), fault,
        )
        order = " (threads in reverse order)" if reverse else ""
        if status == 1:
            raise CudasimError(f"{self.kernel.name} ({self.source}){order}: {error.value.decode()}")
        if status == 2:
            raise CudasimError(f"{self.kernel.name} ({self.source}){order}: {self._fault(fault, args)}")

    def _fault(self, fault, args: tuple) -> str:
        signal, address, offset = fault[0], fault[1] & (2**64 - 1), fault[2]
        where = source_line(self.library.path, offset)
        at = f" at {where}" if where else ""
        who = f"block ({fault[3]}, {fault[4]}, {fault[5]}), thread ({fault[6]}, {fault[7]}, {fault[8]})"
        if signal == 4:
            return f"{who}: out-of-bounds index into a shared or local array, or a misaligned vector access{at}"
        if signal == 11 and fault[9]:
            return f"{who}: stack overflow{at}"
        if signal == 11:
            for i, arg in enumerate(args):
                if not isinstance(arg, ndarray):
                    continue
                name, end = self.kernel.params[i].name, arg.allocation.end
                if end <= address < end + PAGE:
                    past = address - end + 1
                    unit = "byte" if past == 1 else "bytes"
                    return f"{who}: an access {past} {unit} past the end of argument {i} ({name}){at}"
                front = end + PAGE - len(arg.allocation.map)  # the guard page before the array
                if front <= address < front + PAGE:
                    before = arg.allocation.start - address
                    return f"{who}: an access {before} bytes before argument {i} ({name}){at}"
        return f"{who}: {SIGNALS.get(signal, f'signal {signal}')} at address {address:#x}{at}"


def _dims(value: Any) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in (value if isinstance(value, tuple) else (value,)))
    return (dims + (1, 1, 1))[:3]
