"""Compiling CUDA C for cudasim: the unchanged source between cudasim.h (CUDA's built-ins) and
runtime.h (the scheduler), plus one trampoline per kernel that unpacks its arguments, built by
the system C++ compiler into a shared library, cached on disk by a hash of everything that
goes into it.

A kernel is `extern "C" __global__ void name(params)`; its parameters are read from the source
so that launches can be checked against them. `extern __shared__ T name[];` (dynamic shared
memory) is the one construct rewritten: C++ has no such declaration.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kern.cuda.sources import included_text
from kern.errors import KernError

HERE = Path(__file__).resolve().parent
FLAGS = (
    "-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-fno-strict-aliasing", "-w",
    # Out-of-bounds indices into shared and local arrays, and float2/float4 accesses off their
    # alignment (8 and 16 bytes, as on a GPU: x86 would load them anyway), trap (SIGILL),
    # mapped back to the line.
    "-fsanitize=bounds,alignment", "-fsanitize-undefined-trap-on-error",
)
KERNEL = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\(([^)]*)\)\s*)?void\s+'
    r"(?:__launch_bounds__\(([^)]*)\)\s*)?(\w+)\s*\(([^)]*)\)",
    re.S,
)
DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w\s]+?)\s+(\w+)\s*\[\s*\]\s*;")

# C parameter types -> (kind, numpy dtype name); kind "pointer" or "scalar".
SCALARS = {
    "int": "int32", "unsigned int": "uint32", "unsigned": "uint32", "long long": "int64",
    "long long int": "int64", "unsigned long long": "uint64", "size_t": "uint64",
    "float": "float32", "double": "float64", "bool": "bool", "char": "int8",
    "unsigned char": "uint8", "short": "int16",
}


class CompileError(KernError):
    """No C++ compiler, or the source does not compile."""


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # as declared, without qualifiers that do not change the type
    pointer: bool
    dtype: str  # numpy name of the scalar or of the pointed-to element ("void": any)


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple[Param, ...]
    # __launch_bounds__'s first argument as written (a macro maybe; the library holds its
    # value as __cudasim_bounds_NAME): a launch of a bigger block is refused, as CUDA does.
    bounds: str | None = None


def parse_param(text: str) -> Param:
    words = text.replace("*", " * ").replace("__restrict__", " ").split()
    name = words[-1]
    pointer = "*" in words
    base = " ".join(w for w in words[:-1] if w not in ("const", "volatile", "*"))
    if base != "void" and base not in SCALARS:
        raise CompileError(f"cudasim: parameter {text.strip()!r}: type {base!r} is not supported")
    ctype = " ".join(w for w in words[:-1] if w != "*") + (" *" if pointer else "")
    return Param(name, ctype, pointer, "void" if base == "void" else SCALARS[base])


def kernels_of(code: str) -> list[Kernel]:
    found = []
    for before, after, name, params in KERNEL.findall(code):
        parts = [p for p in params.split(",") if p.strip()]
        bounds = (before or after).split(",")[0].strip() or None
        found.append(Kernel(name, tuple(parse_param(p) for p in parts), bounds))
    return found


def trampolines(kernels: list[Kernel]) -> str:
    """extern "C" void __cudasim_call_NAME(void** a) { NAME(*(T0*)a[0], ...); }"""
    lines = []
    for kernel in kernels:
        args = ", ".join(f"*({p.ctype}*)a[{i}]" for i, p in enumerate(kernel.params))
        lines.append(f'extern "C" void __cudasim_call_{kernel.name}(void** a) {{ {kernel.name}({args}); }}')
        if kernel.bounds:
            lines.append(f'extern "C" const int __cudasim_bounds_{kernel.name} = (int)({kernel.bounds});')
    return "\n".join(lines)


def compiler() -> str:
    """The C++ compiler: $KERN_CUDASIM_CXX, else g++, else clang++."""
    chosen = os.environ.get("KERN_CUDASIM_CXX")
    if chosen and not shutil.which(chosen):
        raise CompileError(f"KERN_CUDASIM_CXX={chosen}: no such compiler")
    chosen = chosen or shutil.which("g++") or shutil.which("clang++")
    if not chosen:
        raise CompileError("no C++ compiler (install g++, or set KERN_CUDASIM_CXX to clang++)")
    return chosen


@functools.cache
def _version(cxx: str) -> str:
    """The compiler's own version line, part of the cache key (asked once per process)."""
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def cache_dir() -> Path:
    base = os.environ.get("KERN_CUDASIM_CACHE")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kern" / "cudasim"


def translation_unit(code: str, name: str) -> str:
    code = DYNAMIC_SHARED.sub(lambda m: f"{m[1]}* {m[2]} = ({m[1]}*)cudasim_dynamic_shared();", code)
    return (
        f'#include "{HERE / "cudasim.h"}"\n#line 1 "{name}"\n{code}\n'
        f'#line 1 "cudasim-trampolines"\n{trampolines(kernels_of(code))}\n'
        f'#include "{HERE / "runtime.h"}"\n'
    )


def build(code: str, name: str, options: tuple[str, ...]) -> Path:
    """The shared library for this source, compiled now or found in the cache."""
    cxx = compiler()
    unit = translation_unit(code, name)
    header = (HERE / "cudasim.h").read_text() + (HERE / "runtime.h").read_text()
    folders = [Path(o[2:]) for o in options if o.startswith("-I")]
    included = included_text(code, folders)  # an edited header must not reuse the old build
    version = _version(cxx)
    parts = [unit, header, included, *options, *FLAGS, cxx, version]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    folder = cache_dir()
    library = folder / f"{Path(name).stem}-{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        source = Path(work) / "unit.cpp"
        source.write_text(unit)
        out = Path(work) / "module.so"
        command = [cxx, *FLAGS, *options, "-o", str(out), str(source)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise CompileError(f"cudasim: {name} does not compile:\n{result.stderr.strip()[-3000:]}")
        os.replace(out, library)  # atomic: another process may be compiling the same
    return library


def static_shared_bytes(library: Path) -> dict[str, int]:
    """Bytes of static __shared__ memory per kernel (the function-local statics in the
    cudasim_shared section, named kernel::variable)."""
    listing = subprocess.run(
        ["nm", "-C", "-S", "--defined-only", str(library)], capture_output=True, text=True
    ).stdout
    sizes: dict[str, int] = {}
    for line in listing.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and "::" in parts[3]:
            owner = parts[3].split("::")[0].split("(")[0]
            sizes[owner] = sizes.get(owner, 0) + int(parts[1], 16)
    return sizes


def source_line(library: Path, offset: int) -> str | None:
    """file:line of an address in the library (from its debug information), where known."""
    if not shutil.which("addr2line"):
        return None
    result = subprocess.run(["addr2line", "-e", str(library), hex(offset)], capture_output=True, text=True)
    where = result.stdout.strip().split(" (discriminator")[0]
    return None if not where or where.startswith("??") else where.rsplit("/", 1)[-1]
