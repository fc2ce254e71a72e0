"""cudasim: the CUDA backend's real kernels and its real Python code, run on the CPU.

`CudasimBackend` is kern/cuda/backend.py itself, loaded with kern/cudasim/device.py in place of
CuPy (`CudasimTraining`: kern/cuda/training.py likewise). The unchanged kern/cuda/*.cu are
compiled by the system C++ compiler with CUDA's built-ins (cudasim.h) and run block by block,
each CUDA thread a fiber. Grids, blocks and argument packing are exercised as on a GPU, and
kernel bugs (barrier divergence, out-of-bounds accesses, races, mistyped arguments) are
reported with the kernel, block, thread and line. Slow (about a thousandth of a GPU): for
tests, debugging and learning, on any machine with g++.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys
from pathlib import Path

from kern.cudasim import device
from kern.cudasim.compiler import CompileError, compiler

__all__ = ["CudasimBackend", "CudasimTraining"]


def _with_stand_in(file: str, name: str, modules: dict):
    """kern/cuda/<file> as a module of its own, whose imports of the names in `modules` get
    those instead (`cupy`: the stand-in; the real kern.cuda modules, and sys.modules, are left
    alone)."""
    path = Path(__file__).resolve().parent.parent / "cuda" / file
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)

    def import_(imported, *args, **options):
        return modules[imported] if imported in modules else builtins.__import__(imported, *args, **options)

    module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": import_}
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


try:
    compiler()
except CompileError as error:
    raise ImportError(str(error)) from None

_cuda = _with_stand_in("backend.py", "kern.cudasim._cuda_backend", {"cupy": device})
_training = _with_stand_in("training.py", "kern.cudasim._cuda_training", {"kern.cuda.backend": _cuda})


class CudasimBackend(_cuda.CudaBackend):
    name = "cudasim"


class CudasimTraining(_training.CudaTraining):
    name = "cudasim"
