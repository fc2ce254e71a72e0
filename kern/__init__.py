"""kern: hand-written neural-network kernels (NumPy reference, Numba CPU, CUDA via CuPy).

Installed as the distribution `kern-nn` (the name `kern` on the package index is another
project's); imported as `kern` and `nets`.
"""

from kern.backend import BACKENDS, Backend, get_backend
from kern.errors import KernError
from kern.params import ACTIVATIONS, BatchNorm

__version__ = "0.1.0"
DISTRIBUTION = "kern-nn"

__all__ = [
    "ACTIVATIONS", "BACKENDS", "DISTRIBUTION", "Backend", "BatchNorm", "KernError", "__version__",
    "get_backend",
]
