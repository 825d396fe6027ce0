"""The fused scan's recurrences, on sixteen-lane vectors held in registers (`rtgen.ssm.simd`).

Sixteen channels (one vector) and four states at a time are carried in registers across the steps
of a chunk: per step and state the recurrences load only B and C (and, once per four states, the
step's dt, du and y). Written with plain arrays, LLVM vectorised the loop over channels but loaded
and stored every state at every step, and those loads and stores bound it. With these, the whole
forward+backward of the fused scan is 1.5x faster (one thread, 64 channels, 16k steps: `python
benchmarks/bench_scan_kernel.py` against the revision before, 4404e5b). The number of states is padded to a multiple of four with zero rows of A, B and C, whose
states stay zero. `rtgen.ssm.fused_kernels` calls these per chunk of steps.

numba caches each kernel per source file and does not look at the files of the functions it calls:
after editing this module, touch `rtgen/ssm/fused_kernels.py` and `fused_conv.py` (or delete their
`__pycache__` entries), or the cached kernels keep the old code.
"""

from __future__ import annotations

from rtgen.ssm.fused_math import _ZERO, HAVE_NUMBA, _jit, _vexp2
from rtgen.ssm.simd import LANES

if HAVE_NUMBA:
    import numba

    from rtgen.ssm.simd import vadd, vfma, vload, vmul, vsplat, vstore, vsum, vsum16

    @numba.njit(inline="always", **_jit)
    def _load4(x, i, stride):
        """The vectors at x.flat[i], i + stride, i + 2 stride, i + 3 stride (four states' rows)."""
        return vload(x, i), vload(x, i + stride), vload(x, i + 2 * stride), vload(x, i + 3 * stride)

    @numba.njit(inline="always", **_jit)
    def _store4(x, i, stride, v0, v1, v2, v3):
        """The inverse of `_load4`."""
        vstore(x, i, v0)
        vstore(x, i + stride, v1)
        vstore(x, i + 2 * stride, v2)
        vstore(x, i + 3 * stride, v3)

    @numba.njit(**_jit)
    def _forward_steps(dt, du, Bt, Ct, A, h, yt, s0, sl):
        """Rows s0 .. s0 + sl - 1 of the tiles: h = 2^(dt A) h + du B (h: (N, W), updated), yt[r] = C.h
        (written when the first four states pass, accumulated after). dt, du, yt: (T, W); Bt, Ct: (T, N)."""
        N, W = h.shape
        for j in range(0, W, LANES):
            for n0 in range(0, N, 4):
                i0 = n0 * W + j
                a0, a1, a2, a3 = _load4(A, i0, W)
                h0, h1, h2, h3 = _load4(h, i0, W)
                for r in range(s0, s0 + sl):
                    o = r * W + j
                    d = vload(dt, o)
                    u = vload(du, o)
                    h0 = vfma(_vexp2(vmul(d, a0)), h0, vmul(u, vsplat(Bt[r, n0])))
                    h1 = vfma(_vexp2(vmul(d, a1)), h1, vmul(u, vsplat(Bt[r, n0 + 1])))
                    h2 = vfma(_vexp2(vmul(d, a2)), h2, vmul(u, vsplat(Bt[r, n0 + 2])))
                    h3 = vfma(_vexp2(vmul(d, a3)), h3, vmul(u, vsplat(Bt[r, n0 + 3])))
                    y = vmul(h0, vsplat(Ct[r, n0])) if n0 == 0 else vfma(h0, vsplat(Ct[r, n0]), vload(yt, o))
                    y = vfma(h1, vsplat(Ct[r, n0 + 1]), y)
                    y = vfma(h2, vsplat(Ct[r, n0 + 2]), y)
                    vstore(yt, o, vfma(h3, vsplat(Ct[r, n0 + 3]), y))
                _store4(h, i0, W, h0, h1, h2, h3)

    @numba.njit(inline="always", **_jit)
    def _block(j, n0, N, W, HS, AS):
        """For the block of 16 channels from j and 4 states from n0: its index in (N, W) arrays and where
        its first state's sequence starts in hs and aseq (`_recompute_chunk`'s layout)."""
        q0 = (j // LANES) * N + n0
        return n0 * W + j, q0 * HS, q0 * AS

    @numba.njit(**_jit)
    def _recompute_chunk(dt, du, Bt, A, h, s0, sl, hs, aseq):
        """The states and decays of rows s0 .. s0 + sl - 1 from the chunk's first state h (N, W), laid out
        for the adjoint to walk each (16 channels, state) sequence contiguously: hs[(q (K + 1) + k) 16 + lane]
        is the state after k steps and aseq[(q K + k) 16 + lane] the decay of step k, for q = (j / 16) N + n."""
        N, W = h.shape
        nq = (W // LANES) * N
        HS = hs.size // nq
        AS = aseq.size // nq
        for j in range(0, W, LANES):
            for n0 in range(0, N, 4):
                i0, ho, ao = _block(j, n0, N, W, HS, AS)
                a0, a1, a2, a3 = _load4(A, i0, W)
                h0, h1, h2, h3 = _load4(h, i0, W)
                _store4(hs, ho, HS, h0, h1, h2, h3)
                for k in range(sl):
                    o = (s0 + k) * W + j
                    d = vload(dt, o)
                    u = vload(du, o)
                    e0, e1 = _vexp2(vmul(d, a0)), _vexp2(vmul(d, a1))
                    e2, e3 = _vexp2(vmul(d, a2)), _vexp2(vmul(d, a3))
                    h0 = vfma(e0, h0, vmul(u, vsplat(Bt[s0 + k, n0])))
                    h1 = vfma(e1, h1, vmul(u, vsplat(Bt[s0 + k, n0 + 1])))
                    h2 = vfma(e2, h2, vmul(u, vsplat(Bt[s0 + k, n0 + 2])))
                    h3 = vfma(e3, h3, vmul(u, vsplat(Bt[s0 + k, n0 + 3])))
                    _store4(hs, ho + (k + 1) * LANES, HS, h0, h1, h2, h3)
                    _store4(aseq, ao + k * LANES, AS, e0, e1, e2, e3)

    @numba.njit(inline="always", **_jit)
    def _adjoint_state(g, u, d, e, hp, hn, c, bb, a, lam, gA, su, sv):
        """One state's share of an adjoint step: returns (lam, gA, su, sv, the state's gB and gC terms).
        lm = g c + lam is the adjoint of the state after the step; x = lm e hp is d loss / d (dt A)."""
        lm = vfma(g, c, lam)
        x = vmul(vmul(lm, e), hp)
        return vmul(e, lm), vfma(x, d, gA), vfma(lm, bb, su), vfma(x, a, sv), vmul(lm, u), vmul(g, hn)

    @numba.njit(**_jit)
    def _adjoint_chunk(gy, du, dt, Bt, Ct, A, s0, sl, hs, aseq, lam, gA, gdu, gdv, pB, pC, gBt, gCt):
        """The adjoint recurrence backwards through rows s0 + sl - 1 .. s0 (hs, aseq from `_recompute_chunk`),
        with every gradient it feeds: lam (N, W, a_{t+1} times the adjoint of h_{t+1}) and gA (N, W, summed
        over time) carried in place; gdu, gdv (T, W: sums over states, gdv against A log2(e)) and gBt, gCt
        (T, N: sums over channels) written for these rows. The sums over channels go through pB, pC
        (K, N, 16: one vector per step and state, summed over the channel vectors) and are reduced per
        sixteen states at once (`vsum16`)."""
        N, W = A.shape
        nq = (W // LANES) * N
        HS = hs.size // nq
        AS = aseq.size // nq
        for j in range(0, W, LANES):
            for n0 in range(0, N, 4):
                i0, ho, ao = _block(j, n0, N, W, HS, AS)
                a0, a1, a2, a3 = _load4(A, i0, W)
                l0, l1, l2, l3 = _load4(lam, i0, W)
                q_0, q_1, q_2, q_3 = _load4(gA, i0, W)
                for k in range(sl - 1, -1, -1):
                    r = s0 + k
                    o = r * W + j
                    g = vload(gy, o)
                    u = vload(du, o)
                    d = vload(dt, o)
                    su = vsplat(_ZERO) if n0 == 0 else vload(gdu, o)
                    sv = vsplat(_ZERO) if n0 == 0 else vload(gdv, o)
                    oh = ho + k * LANES
                    oa = ao + k * LANES
                    l0, q_0, su, sv, b0, c0 = _adjoint_state(g, u, d, vload(aseq, oa), vload(hs, oh),
                                                             vload(hs, oh + LANES), vsplat(Ct[r, n0]),
                                                             vsplat(Bt[r, n0]), a0, l0, q_0, su, sv)
                    l1, q_1, su, sv, b1, c1 = _adjoint_state(g, u, d, vload(aseq, oa + AS), vload(hs, oh + HS),
                                                             vload(hs, oh + HS + LANES), vsplat(Ct[r, n0 + 1]),
                                                             vsplat(Bt[r, n0 + 1]), a1, l1, q_1, su, sv)
                    l2, q_2, su, sv, b2, c2 = _adjoint_state(g, u, d, vload(aseq, oa + 2 * AS),
                                                             vload(hs, oh + 2 * HS), vload(hs, oh + 2 * HS + LANES),
                                                             vsplat(Ct[r, n0 + 2]), vsplat(Bt[r, n0 + 2]), a2, l2,
                                                             q_2, su, sv)
                    l3, q_3, su, sv, b3, c3 = _adjoint_state(g, u, d, vload(aseq, oa + 3 * AS),
                                                             vload(hs, oh + 3 * HS), vload(hs, oh + 3 * HS + LANES),
                                                             vsplat(Ct[r, n0 + 3]), vsplat(Bt[r, n0 + 3]), a3, l3,
                                                             q_3, su, sv)
                    vstore(gdu, o, su)
                    vstore(gdv, o, sv)
                    p = (k * N + n0) * LANES
                    if j > 0:
                        b0, c0 = vadd(b0, vload(pB, p)), vadd(c0, vload(pC, p))
                        b1, c1 = vadd(b1, vload(pB, p + LANES)), vadd(c1, vload(pC, p + LANES))
                        b2, c2 = vadd(b2, vload(pB, p + 2 * LANES)), vadd(c2, vload(pC, p + 2 * LANES))
                        b3, c3 = vadd(b3, vload(pB, p + 3 * LANES)), vadd(c3, vload(pC, p + 3 * LANES))
                    _store4(pB, p, LANES, b0, b1, b2, b3)
                    _store4(pC, p, LANES, c0, c1, c2, c3)
                _store4(lam, i0, W, l0, l1, l2, l3)
                _store4(gA, i0, W, q_0, q_1, q_2, q_3)
        for k in range(sl):
            r = s0 + k
            for n in range(0, N - LANES + 1, LANES):
                vsum16(pB, (k * N + n) * LANES, gBt, r * N + n)
                vsum16(pC, (k * N + n) * LANES, gCt, r * N + n)
            for n in range(N - N % LANES, N):
                gBt[r, n] = vsum(vload(pB, (k * N + n) * LANES))
                gCt[r, n] = vsum(vload(pC, (k * N + n) * LANES))
