"""The CUDA C sources of the cuda backend and how they are compiled (no cupy needed here,
so CI can compile every file with nvcc on a machine without a GPU)."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SOURCES = ("conv.cu", "pool.cu", "elementwise.cu")
# Tuning constants, passed to the compiler as -D defines.
DEFINES = {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16}


def compile_options(cp_async: bool = False) -> tuple[str, ...]:
    """Options for NVRTC (cupy.RawModule) and nvcc alike; never TF32 or fast-math. cp_async:
    kernel 3 moves its tiles with cp.async (sm_80 and later; not run on cudasim)."""
    defines = {**DEFINES, **({"KERN_CP_ASYNC": 1} if cp_async else {})}
    return (f"-I{FOLDER}", "-std=c++17", *(f"-D{k}={v}" for k, v in defines.items()))
