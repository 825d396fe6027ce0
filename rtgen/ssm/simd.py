"""Sixteen-lane float32 vectors for numba kernels: a numba type whose values are LLVM vectors.

Why: numba compiles array code, and LLVM then vectorises the innermost loop over channels. Every
value that lives across that loop (the scan's states, its adjoints, the running gradient sums) is
then an array element, loaded and stored at every step: the selective scan's recurrences were bound
by those loads and stores, not by arithmetic. A variable of this type is an SSA value, which LLVM
keeps in a register, so a kernel can carry sixteen channels of several states across many time
steps with no memory traffic but its inputs and outputs (`rtgen.ssm.fused_kernels`).

One vector is one AVX-512 register of float32 (two AVX2 registers elsewhere; LLVM legalises it).
Loads and stores take a C-contiguous float32 array and a flat element index, unchecked: the caller
keeps idx + 16 within the array. fma is LLVM's fused multiply-add; min and max are compare-and-select
(x86's vminps and vmaxps), so NaN handling is theirs.

numba caches each kernel per source file and does not look at the files of the functions it calls:
after editing this module, touch `rtgen/ssm/fused_kernels.py` and `fused_conv.py` (or delete their
`__pycache__` entries), or the cached kernels keep the old code.
"""

from __future__ import annotations

try:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic, models, register_model

    HAVE_SIMD = True
except Exception:  # pragma: no cover - only where numba is missing
    HAVE_SIMD = False

LANES = 16

if HAVE_SIMD:
    _vty = ir.VectorType(ir.FloatType(), LANES)
    _ity = ir.VectorType(ir.IntType(32), LANES)

    class F32x16(types.Type):
        def __init__(self):
            super().__init__(name="f32x16")

    f32x16 = F32x16()

    @register_model(F32x16)
    class _F32x16Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, _vty)

    def _pointer(context, builder, array_type, array, idx):
        data = context.make_array(array_type)(context, builder, array).data
        return builder.bitcast(builder.gep(data, [idx]), _vty.as_pointer())

    @intrinsic
    def vload(typingctx, arr, idx):
        """arr.flat[idx:idx + 16]."""
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_pointer(context, builder, sig.args[0], args[0], args[1]), align=4)

        return f32x16(arr, idx), codegen

    @intrinsic
    def vstore(typingctx, arr, idx, v):
        """arr.flat[idx:idx + 16] = v."""
        if not isinstance(arr, types.Array) or arr.dtype != types.float32 or v != f32x16:
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], _pointer(context, builder, sig.args[0], args[0], args[1]), align=4)

        return types.void(arr, idx, v), codegen

    @intrinsic
    def vsplat(typingctx, x):
        """x in every lane."""
        if not isinstance(x, (types.Float, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            x = context.cast(builder, args[0], sig.args[0], types.float32)
            v = builder.insert_element(ir.Constant(_vty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(v, ir.Constant(_vty, ir.Undefined), ir.Constant(_ity, [0] * LANES))

        return f32x16(x), codegen

    def _binary(build):
        @intrinsic
        def op(typingctx, a, b):
            if a != f32x16 or b != f32x16:
                return None

            def codegen(context, builder, sig, args):
                return build(builder, args[0], args[1])

            return f32x16(a, b), codegen

        return op

    vadd = _binary(lambda b, x, y: b.fadd(x, y))
    vsub = _binary(lambda b, x, y: b.fsub(x, y))
    vmul = _binary(lambda b, x, y: b.fmul(x, y))
    vmax = _binary(lambda b, x, y: b.select(b.fcmp_ordered(">", x, y), x, y))
    vmin = _binary(lambda b, x, y: b.select(b.fcmp_ordered("<", x, y), x, y))

    @intrinsic
    def vfma(typingctx, a, b, c):
        """a * b + c, one rounding."""
        if a != f32x16 or b != f32x16 or c != f32x16:
            return None

        def codegen(context, builder, sig, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_vty, [_vty] * 3), "llvm.fma.v16f32")
            return builder.call(fn, args)

        return f32x16(a, b, c), codegen

    @intrinsic
    def vscale_pow2(typingctx, p, t):
        """p * 2^k, where t = k + 1.5 * 2^23 holds the integer k in its low mantissa bits: k is added to
        p's exponent bits (the last step of exp2 by the rounding trick; no overflow check)."""
        if p != f32x16 or t != f32x16:
            return None

        def codegen(context, builder, sig, args):
            pb = builder.bitcast(args[0], _ity)
            kb = builder.shl(builder.bitcast(args[1], _ity), ir.Constant(_ity, [23] * LANES))
            return builder.bitcast(builder.add(pb, kb), _vty)

        return f32x16(p, t), codegen

    @intrinsic
    def vsum(typingctx, v):
        """The sum of the lanes (a halving tree)."""
        if v != f32x16:
            return None

        def codegen(context, builder, sig, args):
            x, n = args[0], LANES
            while n > 1:
                n //= 2
                lo = builder.shuffle_vector(x, x, ir.Constant(_ity, list(range(n)) + [0] * (LANES - n)))
                hi = builder.shuffle_vector(x, x, ir.Constant(_ity, list(range(n, 2 * n)) + [0] * (LANES - n)))
                x = builder.fadd(lo, hi)
            return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))

        return types.float32(v), codegen

    @intrinsic
    def vsum16(typingctx, src, sbase, dst, dbase):
        """dst.flat[dbase + k] = the sum of the lanes of the vector at src.flat[sbase + 16 k], k < 16:
        sixteen horizontal sums for 15 adds per level instead of a tree per vector, by pairing
        vectors and adding their lower and upper halves until one lane per vector is left."""
        if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (src, dst)):
            return None

        def codegen(context, builder, sig, args):
            def at(k):
                idx = builder.add(args[1], ir.Constant(args[1].type, LANES * k))
                return _pointer(context, builder, sig.args[0], args[0], idx)

            vs = [builder.load(at(k), align=4) for k in range(LANES)]
            group = LANES  # lanes per source vector in each of vs
            while group > 1:
                half = group // 2
                lo = [g * group + i for g in range(LANES // group) for i in range(half)]
                hi = [i + half for i in lo]
                vs = [builder.fadd(builder.shuffle_vector(a, b, ir.Constant(_ity, lo + [i + LANES for i in lo])),
                                   builder.shuffle_vector(a, b, ir.Constant(_ity, hi + [i + LANES for i in hi])))
                      for a, b in zip(vs[0::2], vs[1::2])]
                group = half
            builder.store(vs[0], _pointer(context, builder, sig.args[2], args[2], args[3]), align=4)

        return types.void(src, sbase, dst, dbase), codegen
