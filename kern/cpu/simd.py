"""Eight float32 lanes as one Numba value: what `__m256` and `_mm256_fmadd_ps` are in C.

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

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


class Float32x8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="float32x8")


float32x8 = Float32x8()
_VECTOR = ir.VectorType(ir.FloatType(), 8)
_QUARTER = ir.VectorType(ir.FloatType(), 4)  # half a vector: one 128-bit xmm register


@register_model(Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _contiguous_float32(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"


def _scalar_pointer(context, builder, array_type, array, index_type, index):
    """float* to array's element `index` (flat), with no bounds or negative-index test."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _element_pointer(context, builder, array_type, array, index_type, index):
    """The same as a pointer to eight floats."""
    pointer = _scalar_pointer(context, builder, array_type, array, index_type, index)
    return builder.bitcast(pointer, _VECTOR.as_pointer())


def _lanes(indices) -> ir.Constant:
    """A shufflevector mask."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), list(indices))


def _splat(builder, scalar):
    """A float32 value in every lane: insert into lane 0, shuffle lane 0 everywhere."""
    one = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, one, _lanes([0] * 8))


@intrinsic
def load8(typingctx, arr, index):
    """arr[index : index + 8] as one vector (unaligned load)."""
    if not (_contiguous_float32(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        return builder.load(pointer, align=4)

    return float32x8(arr, index), codegen


@intrinsic
def store8(typingctx, arr, index, value):
    """arr[index : index + 8] = value (unaligned store)."""
    if not (_contiguous_float32(arr) and isinstance(index, types.Integer) and value == float32x8):
        return None

    def codegen(context, builder, sig, args):
        pointer = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(args[2], pointer, align=4)
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


@intrinsic
def splat8(typingctx, value):
    """A vector with `value` (cast to float32) in every lane: a broadcast."""
    if not isinstance(value, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32))

    return float32x8(value), codegen


@intrinsic
def broadcast8(typingctx, arr, index):
    """arr[index] in every lane (a broadcast load, no bounds or negative-index test)."""
    if not (_contiguous_float32(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _scalar_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        return _splat(builder, builder.load(pointer, align=4))

    return float32x8(arr, index), codegen


@intrinsic
def lane8(typingctx, vector, index):
    """One lane of a vector, as a float32 scalar."""
    if not (vector == float32x8 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1], types.intp))

    return types.float32(vector, index), codegen


def _llvm_intrinsic(builder, name: str, args):
    function_type = ir.FunctionType(_VECTOR, [_VECTOR] * len(args))
    return builder.call(cgutils.get_or_insert_function(builder.module, function_type, name), args)


@intrinsic
def fma8(typingctx, a, b, c):
    """a * b + c in every lane, rounded once (one vfmadd instruction)."""
    if not a == b == c == float32x8:
        return None

    def codegen(context, builder, sig, args):
        return _llvm_intrinsic(builder, "llvm.fma.v8f32", args)

    return float32x8(a, b, c), codegen


def _binary(operation):
    @intrinsic
    def vector_op(typingctx, a, b):
        if not a == b == float32x8:
            return None

        def codegen(context, builder, sig, args):
            return operation(builder, *args)

        return float32x8(a, b), codegen

    return vector_op


add8 = _binary(lambda builder, a, b: builder.fadd(a, b))
sub8 = _binary(lambda builder, a, b: builder.fsub(a, b))
mul8 = _binary(lambda builder, a, b: builder.fmul(a, b))
div8 = _binary(lambda builder, a, b: builder.fdiv(a, b))
max8 = _binary(lambda builder, a, b: _llvm_intrinsic(builder, "llvm.maxnum.v8f32", [a, b]))


@intrinsic
def exp8(typingctx, vector):
    """e ** x in every lane (LLVM calls expf once per lane: used only by the logistic)."""
    if vector != float32x8:
        return None

    def codegen(context, builder, sig, args):
        return _llvm_intrinsic(builder, "llvm.exp.v8f32", args)

    return float32x8(vector), codegen


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




ALIGN_FLOATS = 16  # 64 bytes: a cache line


@njit(cache=True)
def aligned_empty(size):
    """np.empty(size, float32) starting on a 64-byte line, so that no vector load of an
    8-float-aligned index spans two cache lines (measured on grouped.py's kernel: 5-8% faster
    than with every other load split)."""
    raw = np.empty(size + ALIGN_FLOATS, dtype=np.float32)
    shift = -(raw.ctypes.data // 4) % ALIGN_FLOATS
    return raw[shift : shift + size]
