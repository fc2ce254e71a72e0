"""kern: hand-written neural-network kernels (NumPy reference, Numba CPU, CUDA via CuPy)."""

from kern.backend import BACKENDS, Backend, get_backend
from kern.errors import KernError
from kern.params import ACTIVATIONS, BatchNorm

__all__ = ["ACTIVATIONS", "BACKENDS", "Backend", "BatchNorm", "KernError", "get_backend"]
