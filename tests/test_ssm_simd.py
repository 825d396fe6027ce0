"""The sixteen-lane vector type the scan kernels are written in (`rtgen.ssm.simd`), against NumPy."""

import numpy as np
import pytest

from rtgen.ssm import fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba kernel unavailable")


def test_vector_arithmetic_loads_and_stores_match_numpy():
    from rtgen.ssm.simd import vadd, vfma, vload, vmax, vmin, vmul, vsplat, vstore, vsub, vsum

    @fused.numba.njit
    def run(x, y, out, sums):
        a, b = vload(x, 3), vload(y, 5)  # unaligned offsets
        vstore(out, 0, vadd(a, b))
        vstore(out, 16, vsub(a, b))
        vstore(out, 32, vmul(a, b))
        vstore(out, 48, vfma(a, b, vsplat(np.float32(0.5))))
        vstore(out, 64, vmax(a, b))
        vstore(out, 80, vmin(a, vsplat(2)))  # an integer splat
        sums[0] = vsum(a)

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(40).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    out, sums = np.zeros(96, np.float32), np.zeros(1, np.float32)
    run(x, y, out, sums)
    a, b = x[3:19], y[5:21]
    for k, want in enumerate([a + b, a - b, a * b, a * b + 0.5, np.maximum(a, b), np.minimum(a, 2)]):
        np.testing.assert_allclose(out[16 * k:16 * k + 16], want, rtol=1e-6, atol=1e-6)
    assert sums[0] == pytest.approx(a.astype(np.float64).sum(), abs=1e-5)


def test_vsum16_sums_sixteen_vectors_at_once():
    from rtgen.ssm.simd import vsum16

    @fused.numba.njit
    def run(src, dst):
        vsum16(src, 16, dst, 2)  # from the second vector, into dst[2:18]

    src = np.random.default_rng(1).standard_normal(17 * 16).astype(np.float32)
    dst = np.zeros(20, np.float32)
    run(src, dst)
    want = src[16:].reshape(16, 16).astype(np.float64).sum(1)
    np.testing.assert_allclose(dst[2:18], want, rtol=1e-5, atol=1e-5)
    assert not dst[:2].any() and not dst[18:].any()  # nothing written outside
