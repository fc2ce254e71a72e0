"""The CUDA backend (hand-written CUDA C kernels through CuPy). cupy is imported here only.

Importing this module without cupy, or without a GPU, raises ImportError with the reason;
kern.get_backend turns that into one line for the user.
"""

try:
    import cupy
except ImportError:
    raise ImportError(
        "cupy is not installed (pip install 'kern[cuda12]' or 'kern[cuda13]')"
    ) from None

try:
    _gpus = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError:
    _gpus = 0
if _gpus == 0:
    raise ImportError("no CUDA GPU found")

raise ImportError("the CUDA kernels are not built yet (issue 4)")
