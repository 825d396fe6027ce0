"""Float32 math for the fused CPU scan's numba kernels, in plain arithmetic so that it vectorises.

A libm call would stop the kernels' loops from vectorising (numba has no SVML here), so the exps
they need are written out: `_exp` (a Cephes-style expf, about 1 ulp: the gates' sigmoids and
softplus) and `_vexp2` (Cephes' exp2f on sixteen lanes, about 2 ulp: the decays, given A log2(e)).
Both reduce the range by the 1.5 * 2^23 rounding trick and add 2^k to the exponent bits; fastmath
stays off (only FMA contraction), which the trick needs. Also the softplus and its derivative, the
numba options every kernel compiles with, and whether numba is usable at all.

numba caches each kernel per source file and does not look at the files of the functions it calls:
after editing this module, touch `rtgen/ssm/fused_kernels.py` and `fused_conv.py` (or delete their
`__pycache__` entries), or the cached kernels keep the old code.
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is a dependency, but the torch path must keep working without it
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    from rtgen.ssm.simd import vadd, vfma, vmax, vmin, vscale_pow2, vsplat, vsub

    HAVE_NUMBA = True
    # numba's OpenMP layer shares the machine with PyTorch's OpenMP pool and ran the kernels 2x slower
    # here (measured); the workqueue layer does not. Respect an explicit choice.
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"
except Exception:  # pragma: no cover - exercised only where numba is missing or broken
    HAVE_NUMBA = False

_f32 = np.float32
_MAGIC = _f32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
_LOG2E = _f32(1.44269504088896341)
_LN2_HI = _f32(0.693359375)
_LN2_LO = _f32(-2.12194440e-4)
_X_MIN = _f32(-87.0)  # exp(-87) ~ 1.6e-38: below this, decays are zero for every practical purpose
_X_MAX = _f32(88.0)
_P0, _P1, _P2, _P3 = _f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3), _f32(4.1665795894e-2)
_P4, _P5 = _f32(1.6666665459e-1), _f32(5.0000001201e-1)
_ONE = _f32(1.0)
_LN2 = _f32(0.693147180559945309)
_E2_MIN, _E2_MAX = _f32(-126.0), _f32(127.0)
_Q0, _Q1, _Q2 = _f32(1.535336188319500e-4), _f32(1.339887440266574e-3), _f32(9.618437357674640e-3)
_Q3, _Q4, _Q5 = _f32(5.550332471162809e-2), _f32(2.402264791363012e-1), _f32(6.931472028550421e-1)
_ZERO = _f32(0.0)
_MAGIC_BITS = np.int32(0x4B400000)
_BIAS = np.int32(127)


if HAVE_NUMBA:

    @intrinsic
    def _f32_bits(typingctx, x):
        """float32 -> its bits as int32."""
        if x != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _bits_f32(typingctx, x):
        """int32 bits -> float32."""
        if x != types.int32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    # fastmath: only FMA contraction (reassociation would undo the exp rounding trick); error_model numpy: no
    # ZeroDivisionError branches in the loops
    _jit = dict(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")

    @numba.njit(inline="always", **_jit)
    def _exp(x):
        """expf in plain arithmetic (vectorisable), ~1 ulp on [-87, 88]; clamps outside."""
        x = min(max(x, _X_MIN), _X_MAX)
        t = x * _LOG2E + _MAGIC  # round(x / ln2) in the low bits of t
        k = t - _MAGIC
        r = x - k * _LN2_HI
        r = r - k * _LN2_LO
        p = _P0 * r + _P1
        p = p * r + _P2
        p = p * r + _P3
        p = p * r + _P4
        p = p * r + _P5
        p = p * r * r + r + _ONE
        ki = np.int32(_f32_bits(t) - _MAGIC_BITS)
        return p * _bits_f32(np.int32(np.int32(ki + _BIAS) << np.int32(23)))


    @numba.njit(inline="always", **_jit)
    def _softplus(x):
        """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), the log1p as 2 atanh(y / (2 + y)) by its odd series
        (y in (0, 1], so the ratio is at most 1/3 and seven terms give float32 accuracy); vectorises."""
        y = _exp(-abs(x))
        f = y / (_f32(2.0) + y)
        f2 = f * f
        p = _f32(1.0 / 13.0) * f2 + _f32(1.0 / 11.0)
        p = p * f2 + _f32(1.0 / 9.0)
        p = p * f2 + _f32(1.0 / 7.0)
        p = p * f2 + _f32(1.0 / 5.0)
        p = p * f2 + _f32(1.0 / 3.0)
        p = p * f2 + _ONE
        return max(x, _ZERO) + _f32(2.0) * f * p

    @numba.njit(inline="always", **_jit)
    def _one_minus_exp_neg(x):
        """1 - e^-x for x >= 0 without cancellation near 0 (a Taylor series below 1/4): the softplus'
        derivative sigmoid(v) from the step x = softplus(v)."""
        small = x * (_ONE - x * _f32(0.5) * (_ONE - x * _f32(1.0 / 3.0) * (
            _ONE - x * _f32(0.25) * (_ONE - x * _f32(0.2) * (_ONE - x * _f32(1.0 / 6.0))))))
        return small if x < _f32(0.25) else _ONE - _exp(-x)

    @numba.njit(inline="always", **_jit)
    def _vexp2(x):
        """2^x on sixteen lanes, for the decays: Cephes exp2f's degree-6 polynomial on [-1/2, 1/2]
        (about 2 ulp), with 2^k added to the exponent bits straight from the rounding constant's low
        bits. Seven fewer operations than `_exp`: no ln 2 split, no 2^k built apart (measured: the
        recurrence steps 1.2-1.3x faster). Clamps to [-126, 127]."""
        x = vmin(vmax(x, vsplat(_E2_MIN)), vsplat(_E2_MAX))
        t = vadd(x, vsplat(_MAGIC))
        r = vsub(x, vsub(t, vsplat(_MAGIC)))
        p = vfma(vsplat(_Q0), r, vsplat(_Q1))
        p = vfma(p, r, vsplat(_Q2))
        p = vfma(p, r, vsplat(_Q3))
        p = vfma(p, r, vsplat(_Q4))
        p = vfma(p, r, vsplat(_Q5))
        p = vfma(p, r, vsplat(_ONE))
        return vscale_pow2(p, t)
