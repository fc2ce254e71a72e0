"""The CUDA C sources of the cuda backend and how they are compiled (no cupy needed here,
so CI can compile every file with nvcc on a machine without a GPU)."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
SOURCES = ("conv.cu", "pool.cu", "elementwise.cu")
# Tuning constants, passed to the compiler as -D defines.
DEFINES = {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16}


def compile_options() -> tuple[str, ...]:
    """Options for NVRTC (cupy.RawModule) and nvcc alike; never TF32 or fast-math."""
    return (f"-I{FOLDER}", "-std=c++17", *(f"-D{k}={v}" for k, v in DEFINES.items()))
