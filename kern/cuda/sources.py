"""The CUDA C sources of the cuda backend and how they are compiled (no cupy needed here,
so CI can compile every file with nvcc on a machine without a GPU)."""

import hashlib
import re
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
INFERENCE_SOURCES = ("conv.cu", "pool.cu", "elementwise.cu")  # what CudaBackend compiles
TRAINING_SOURCES = ("train.cu",)  # and what CudaTraining adds
SOURCES = INFERENCE_SOURCES + TRAINING_SOURCES
# Tuning constants, passed to the compiler as -D defines (the launches read them here too):
# the 64-GEMM's tile, the threads of every block that reduces (a power of two), and the
# weight gradient's (filters x taps) tile and pixels per shared-memory step.
DEFINES = {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16, "REDUCE_THREADS": 256, "WG_TILE": 16, "WG_PIXELS": 64}


def compile_options(cp_async: bool = False) -> tuple[str, ...]:
    """Options for NVRTC (cupy.RawModule) and nvcc alike; never TF32 or fast-math. cp_async:
    kernel 3 moves its tiles with cp.async (sm_80 and later; not run on cudasim)."""
    defines = {**DEFINES, **({"KERN_CP_ASYNC": 1} if cp_async else {})}
    return (f"-I{FOLDER}", "-std=c++17", *(f"-D{k}={v}" for k, v in defines.items()))


INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def included_text(code: str, folders: list[Path]) -> str:
    """The text of every `#include "..."` file the code reaches (looked for in `folders`, in
    order; nested includes too). Compile caches that key on the source text alone (CuPy's,
    and once cudasim's) reuse a stale build after an edit of a header: they key on this too."""
    seen: dict[Path, str] = {}
    pending = [code]
    while pending:
        for name in INCLUDE.findall(pending.pop()):
            found = next((folder / name for folder in folders if (folder / name).is_file()), None)
            if found is not None and found not in seen:
                seen[found] = found.read_text()
                pending.append(seen[found])
    return "".join(f"\0{path}\0{text}" for path, text in sorted(seen.items()))


def source_code(name: str) -> str:
    """A kern/cuda source as the backend compiles it: the file, then a comment with the hash
    of the headers it includes, so that CuPy's cache (keyed on the code) rebuilds after an
    edit of activation.cuh."""
    code = (FOLDER / name).read_text()
    digest = hashlib.sha256(included_text(code, [FOLDER]).encode()).hexdigest()[:16]
    return f"{code}\n// kern: included headers {digest}\n"
