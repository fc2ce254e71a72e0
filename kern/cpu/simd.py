"""Eight (or sixteen) float32 lanes as one Numba value: what `__m256` and `_mm256_fmadd_ps`
(`__m512`, `_mm512_fmadd_ps`) are in C.

Numba has no vector type, and LLVM does not turn a tile of scalar accumulators into vector
registers by itself (docs/numba.md: a 6x16 tile of scalars or a small local array ran at
4 GFLOP/s). So this module adds one type, `float32x8`, lowered to LLVM's `<8 x float>`, and
the few operations a GEMM micro-kernel needs, each a line or two of LLVM IR. A value of this
type is an SSA value: LLVM keeps it in a register (one AVX2 ymm register here) unless it runs
out of them. On a CPU without AVX2 or FMA, LLVM splits the same code into narrower
instructions: slower, still correct.

Loads and stores take a C-contiguous array and a flat element index: `load8(row, i)` reads
row[i : i + 8]. There is no bounds check, as with `_mm256_loadu_ps`: callers keep i + 8 within
the array. For transposes (grouped.py) there are lane shuffles with a fixed pattern
(`shuffle8`, like `_mm256_shuffle_ps`) and loads and stores of half vectors (`load_halves`,
`store_halves`: 4 floats each from or to two places).
"""

import os

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


class Float32xN(types.Type):
    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"float32x{lanes}")


@register_model(Float32xN)
class _Float32xNModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.lanes))


def _contiguous_float32(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"


def _scalar_pointer(context, builder, array_type, array, index_type, index):
    """float* to array's element `index` (flat), with no bounds or negative-index test."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _lanes(indices) -> ir.Constant:
    """A shufflevector mask."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), list(indices))


def _llvm_intrinsic(builder, name: str, args):
    function_type = ir.FunctionType(args[0].type, [args[0].type] * len(args))
    return builder.call(cgutils.get_or_insert_function(builder.module, function_type, name), args)


class VectorOps:
    """One vector width's type and the operations of a GEMM micro-kernel on it: load, store,
    splat, broadcast, lane, fma, add, sub, mul, div, max, exp (all as documented for the
    8-lane names below; a width of 16 is AVX-512's zmm register, which an AVX2 CPU runs as two
    halves)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self.type = vector_type = Float32xN(lanes)
        llvm_vector = ir.VectorType(ir.FloatType(), lanes)
        suffix = f"v{lanes}f32"

        def splat(builder, scalar):
            undefined, first = ir.Constant(llvm_vector, ir.Undefined), ir.Constant(ir.IntType(32), 0)
            one = builder.insert_element(undefined, scalar, first)
            return builder.shuffle_vector(one, one, _lanes([0] * lanes))

        def vector_pointer(context, builder, array_type, array, index_type, index):
            pointer = _scalar_pointer(context, builder, array_type, array, index_type, index)
            return builder.bitcast(pointer, llvm_vector.as_pointer())

        @intrinsic
        def load(typingctx, arr, index):
            if not (_contiguous_float32(arr) and isinstance(index, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                pointer = vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                return builder.load(pointer, align=4)

            return vector_type(arr, index), codegen

        @intrinsic
        def store(typingctx, arr, index, value):
            if not (_contiguous_float32(arr) and isinstance(index, types.Integer) and value == vector_type):
                return None

            def codegen(context, builder, sig, args):
                pointer = vector_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                builder.store(args[2], pointer, align=4)
                return context.get_dummy_value()

            return types.none(arr, index, value), codegen

        @intrinsic
        def splat_value(typingctx, value):
            if not isinstance(value, (types.Float, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                return splat(builder, context.cast(builder, args[0], sig.args[0], types.float32))

            return vector_type(value), codegen

        @intrinsic
        def broadcast(typingctx, arr, index):
            if not (_contiguous_float32(arr) and isinstance(index, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                pointer = _scalar_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                return splat(builder, builder.load(pointer, align=4))

            return vector_type(arr, index), codegen

        @intrinsic
        def lane(typingctx, vector, index):
            if not (vector == vector_type and isinstance(index, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.intp))

            return types.float32(vector, index), codegen

        def unary(build):
            @intrinsic
            def vector_op(typingctx, a):
                if a != vector_type:
                    return None
                return vector_type(a), lambda context, builder, sig, args: build(builder, *args)

            return vector_op

        def binary(build):
            @intrinsic
            def vector_op(typingctx, a, b):
                if not a == b == vector_type:
                    return None
                return vector_type(a, b), lambda context, builder, sig, args: build(builder, *args)

            return vector_op

        @intrinsic
        def fma(typingctx, a, b, c):
            if not a == b == c == vector_type:
                return None

            def codegen(context, builder, sig, args):
                return _llvm_intrinsic(builder, f"llvm.fma.{suffix}", args)

            return vector_type(a, b, c), codegen

        self.load, self.store, self.splat, self.broadcast, self.lane = load, store, splat_value, broadcast, lane
        self.fma = fma
        self.add = binary(lambda b, x, y: b.fadd(x, y))
        self.sub = binary(lambda b, x, y: b.fsub(x, y))
        self.mul = binary(lambda b, x, y: b.fmul(x, y))
        self.div = binary(lambda b, x, y: b.fdiv(x, y))
        self.max = binary(lambda b, x, y: _llvm_intrinsic(b, f"llvm.maxnum.{suffix}", [x, y]))
        self.exp = unary(lambda b, x: _llvm_intrinsic(b, f"llvm.exp.{suffix}", [x]))


# Eight lanes: AVX2's ymm register, what every kernel here is written for.
EIGHT = VectorOps(8)
float32x8 = EIGHT.type
load8 = EIGHT.load  # arr[index : index + 8] as one vector (unaligned load)
store8 = EIGHT.store  # arr[index : index + 8] = value (unaligned store)
splat8 = EIGHT.splat  # `value` (cast to float32) in every lane
broadcast8 = EIGHT.broadcast  # arr[index] in every lane (a broadcast load)
lane8 = EIGHT.lane  # one lane, as a float32 scalar
fma8 = EIGHT.fma  # a * b + c in every lane, rounded once (one vfmadd instruction)
add8, sub8, mul8, div8, max8 = EIGHT.add, EIGHT.sub, EIGHT.mul, EIGHT.div, EIGHT.max
exp8 = EIGHT.exp  # e ** x in every lane (LLVM calls expf once per lane: only the logistic uses it)
# Sixteen lanes: AVX-512's zmm register (gemm.conv_gemm16).
SIXTEEN = VectorOps(16)
float32x16 = SIXTEEN.type
load16, store16, broadcast16, splat16, lane16, fma16 = (
    SIXTEEN.load, SIXTEEN.store, SIXTEEN.broadcast, SIXTEEN.splat, SIXTEEN.lane, SIXTEEN.fma,
)
add16 = SIXTEEN.add
_QUARTER = ir.VectorType(ir.FloatType(), 4)  # half of an 8-lane vector: one 128-bit xmm register


def shuffle8(mask: tuple[int, ...]):
    """An operation (a, b) -> vector whose lane i is lane mask[i] of a + b (a's lanes 0-7, b's
    8-15): LLVM's shufflevector, one or two vunpck/vshufps/vperm2f128 instructions. The mask
    is fixed when the operation is made, as the immediate of a C intrinsic is."""
    if len(mask) != 8 or not all(0 <= m < 16 for m in mask):
        raise ValueError(f"shuffle8: expected 8 lane indices in 0..15, got {mask}")
    constant = _lanes(mask)

    @intrinsic
    def shuffle(typingctx, a, b):
        if not a == b == float32x8:
            return None

        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[1], constant)

        return float32x8(a, b), codegen

    return shuffle


@intrinsic
def load_halves(typingctx, arr, low, high):
    """arr[low : low + 4] in lanes 0..3 and arr[high : high + 4] in lanes 4..7 (two 128-bit
    loads, one vinsertf128)."""
    if not (_contiguous_float32(arr) and isinstance(low, types.Integer) and isinstance(high, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        halves = []
        for i in (1, 2):
            pointer = _scalar_pointer(context, builder, sig.args[0], args[0], sig.args[i], args[i])
            halves.append(builder.load(builder.bitcast(pointer, _QUARTER.as_pointer()), align=4))
        return builder.shuffle_vector(halves[0], halves[1], _lanes(range(8)))

    return float32x8(arr, low, high), codegen


@intrinsic
def store_halves(typingctx, arr, low, high, value):
    """arr[low : low + 4] = lanes 0..3 and arr[high : high + 4] = lanes 4..7 (two 128-bit
    stores)."""
    if not (_contiguous_float32(arr) and isinstance(low, types.Integer) and isinstance(high, types.Integer)):
        return None
    if value != float32x8:
        return None

    def codegen(context, builder, sig, args):
        for i, lanes in ((1, range(4)), (2, range(4, 8))):
            half = builder.shuffle_vector(args[3], args[3], _lanes(lanes))
            pointer = _scalar_pointer(context, builder, sig.args[0], args[0], sig.args[i], args[i])
            builder.store(half, builder.bitcast(pointer, _QUARTER.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, low, high, value), codegen




@njit(inline="always", cache=True)
def copy_floats(target, to, source, at, count):
    """target[to : to + count] = source[at : at + count] (1-D float32), 8 lanes at a time, then
    the rest one by one. A plain element loop is not vectorized where LLVM cannot rule out
    that the two overlap: route's and Slice's copies took 2-5x as long so (elementwise.py)."""
    whole = count - count % 8
    for c in range(0, whole, 8):
        store8(target, to + c, load8(source, at + c))
    for c in range(whole, count):
        target[to + c] = source[at + c]


ALIGN_FLOATS = 16  # 64 bytes: a cache line


@njit(cache=True)
def aligned_empty(size):
    """np.empty(size, float32) starting on a 64-byte line, so that no vector load of an
    8-float-aligned index spans two cache lines (measured on grouped.py's kernel: 5-8% faster
    than with every other load split)."""
    raw = np.empty(size + ALIGN_FLOATS, dtype=np.float32)
    shift = -(raw.ctypes.data // 4) % ALIGN_FLOATS
    return raw[shift : shift + size]


def output_array(shape: tuple[int, ...], out: np.ndarray | None) -> np.ndarray:
    """An op's output: `out` (a planned place, C-contiguous, as many floats) seen as `shape`,
    or a new aligned array where there is none."""
    if out is None:
        return aligned_empty(int(np.prod(shape))).reshape(shape)
    if out.size != int(np.prod(shape)) or not out.flags.c_contiguous:
        raise ValueError(f"out {out.shape}: expected {int(np.prod(shape))} contiguous floats for {shape}")
    return out.reshape(shape)


# ---- which vector width the kernels use --------------------------------------------------------
SIMD_PATHS = ("avx512", "avx2", "generic")


def host_simd() -> str:
    """The widest path this CPU runs natively, from the features LLVM (so Numba) compiles for:
    "avx512" (AVX-512F: 16-lane GEMM), "avx2" (AVX2 and FMA: the 8-lane kernels), else
    "generic" (the same 8-lane kernels, which LLVM splits into what the CPU has)."""
    features = binding.get_host_cpu_features()
    if features.get("avx512f", False):
        return "avx512"
    if features.get("avx2", False) and features.get("fma", False):
        return "avx2"
    return "generic"


def choose_simd(requested: str | None = None) -> str:
    """The path asked for (or KERN_SIMD, else the host's); any path runs on any x86 CPU
    Numba supports: a wider one than the CPU has is split by LLVM, correct and slower."""
    choice = requested or os.environ.get("KERN_SIMD") or host_simd()
    if choice not in SIMD_PATHS:
        from kern.errors import KernError

        raise KernError(f"KERN_SIMD={choice}: expected one of {', '.join(SIMD_PATHS)}")
    return choice
