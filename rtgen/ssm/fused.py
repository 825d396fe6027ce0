"""Fused CPU kernel for the Mamba (S6) selective scan, forward and backward, compiled with numba.

Same semantics as `selective_scan_ref` for real A (d, n) and "variable" B, C of shape (b, n, L)
(or (b, 1, n, L)): delta_bias and softplus, D skip, SiLU(z) gating, the last state.

Layout and threading. The wrapper puts every per-channel tensor in (b, L, d) order, so at each
time step the channels are contiguous; the kernel keeps the (n, W) state of a group of W channels
(a multiple of 16, one AVX-512 vector of fp32) in L1 and runs one pass over L, vectorised over the
channels. Work units are (batch, channel group) pairs, run in parallel with `prange`.

exp. The decay exp(delta A) is needed for every (t, channel, state) element. A libm call would stop
the loop from vectorising (numba has no SVML here), so `_exp` is a Cephes-style expf written in
plain arithmetic (range reduction by the 1.5 * 2^23 rounding trick, a degree-7 polynomial, 2^k by
bit casts): about 1 ulp, and it vectorises. fastmath stays off, which the rounding trick needs.

Backward. The forward stores the state every K steps (memory b * d * n * L / K). The backward walks
the chunks from the end: it recomputes the chunk's states and decays from the checkpoint into a
small buffer, then runs the adjoint recurrence backwards through the chunk, forming every gradient
on the way. Sums over channels (the gradients of B and C) are accumulated in 16 lanes and reduced
once per chunk so the inner loop has no horizontal reduction. Sums over L (gradients of A, D) go
through float32 per chunk into float64.

Softplus (with its sigmoid derivative) and the fp32 up-cast run in PyTorch around the kernel.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

try:  # numba is a dependency, but the torch path must keep working without it
    import numba
    from llvmlite import ir
    from numba import prange
    from numba.core import types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
    # numba's OpenMP layer shares the machine with PyTorch's OpenMP pool and ran the kernels 2x slower
    # here (measured); the workqueue layer does not. Respect an explicit choice.
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"
except Exception:  # pragma: no cover - exercised only where numba is missing or broken
    HAVE_NUMBA = False

LANES = 16  # fp32 lanes of an AVX-512 vector; the channel group width is a multiple of it
CHECKPOINT = 32  # steps between stored states (backward recomputes one chunk at a time)
TILE = 128  # steps loaded at once into (time, channel) tiles; a multiple of CHECKPOINT

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

    _f32_3 = types.Array(types.float32, 3, "A")  # any strides: transposed views are read in place
    _f32_1 = types.Array(types.float32, 1, "A")
    _fwd_sig = types.void(_f32_3, _f32_3, _f32_1, types.Array(types.float32, 2, "C"), _f32_3, _f32_3, _f32_1, _f32_3,
                          types.boolean, types.boolean, types.int64, types.int64, types.int64, _f32_3,
                          types.Array(types.float32, 3, "C"), types.Array(types.float32, 4, "C"))
    _bwd_sig = types.void(_f32_3, _f32_3, _f32_1, types.Array(types.float32, 2, "C"), _f32_3, _f32_3, _f32_1, _f32_3,
                          types.boolean, types.boolean, _f32_3, types.Array(types.float32, 3, "C"), types.int64,
                          types.int64, types.int64, types.Array(types.float32, 4, "C"), _f32_3, _f32_3, _f32_3,
                          types.Array(types.float64, 3, "C"), types.Array(types.float64, 2, "C"),
                          types.Array(types.float64, 2, "C"), types.Array(types.float32, 4, "C"),
                          types.Array(types.float32, 4, "C"))

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

    # The helpers below are compiled as functions of their own (not inlined into the parallel kernels):
    # LLVM vectorises their short loops over channels, which it did not do inside the kernels' bodies
    # (measured: the backward went from 71 to 37 ms at L = 16k, d = 128). Arrays shared by the threads
    # (the kernels' arguments) are indexed element by element, never sliced: every view of an array
    # touches its reference count, an atomic that two cores would then fight over.

    @numba.njit(**_jit)
    def _load_tile(src, bi, c0, cw, t0, tl, dst):
        """dst[tt, i] = src[bi, c0 + i, t0 + tt] for a (b, d, L) array of any strides; the loop order
        follows the source's contiguous axis (time for (b, d, L) tensors, channels for transposed views)."""
        if src.strides[2] <= src.strides[1]:  # 8 rows at a time: 1.5x faster than one (measured)
            for i0 in range(0, cw, 8):
                for tt in range(tl):
                    for i in range(i0, min(cw, i0 + 8)):
                        dst[tt, i] = src[bi, c0 + i, t0 + tt]
        else:
            for tt in range(tl):
                for i in range(cw):
                    dst[tt, i] = src[bi, c0 + i, t0 + tt]

    @numba.njit(**_jit)
    def _store_tile(src, dst, bi, c0, cw, t0, tl):
        """dst[bi, c0 + i, t0 + tt] = src[tt, i] (the inverse of `_load_tile`)."""
        if dst.strides[2] <= dst.strides[1]:
            for i0 in range(0, cw, 8):
                for tt in range(tl):
                    for i in range(i0, min(cw, i0 + 8)):
                        dst[bi, c0 + i, t0 + tt] = src[tt, i]
        else:
            for tt in range(tl):
                for i in range(cw):
                    dst[bi, c0 + i, t0 + tt] = src[tt, i]

    @numba.njit(**_jit)
    def _load_states(src, bi, t0, tl, dst):
        """dst[tt, n] = src[bi, n, t0 + tt] for B or C of shape (b, n, L), any strides."""
        for n in range(src.shape[1]):
            for tt in range(tl):
                dst[tt, n] = src[bi, n, t0 + tt]

    @numba.njit(**_jit)
    def _steps_tile(pt, bias, tl, softplus, dt):
        """pt += bias (delta before the softplus, kept for the backward); dt = softplus(pt) or pt."""
        W = pt.shape[1]
        for tt in range(tl):
            pr = pt[tt]
            dr = dt[tt]
            for i in range(W):
                pr[i] = pr[i] + bias[i]
            if softplus:
                for i in range(W):
                    dr[i] = _softplus(pr[i])
            else:
                for i in range(W):
                    dr[i] = pr[i]

    @numba.njit(**_jit)
    def _product_tile(x, y, tl, out):
        """out = x * y over the first tl rows (du = dt u)."""
        W = x.shape[1]
        for tt in range(tl):
            xr = x[tt]
            yr = y[tt]
            orow = out[tt]
            for i in range(W):
                orow[i] = xr[i] * yr[i]

    @numba.njit(**_jit)
    def _load_inputs(u, delta, z, Bm, Cm, bias, bi, c0, cw, t0, tl, softplus, has_z, ut, pt, dt, dut, zt, Bt, Ct):
        """A tile's inputs, as the forward and the backward both need them: u, delta + bias (pt), the
        step dt, du = dt u, z (if gated), B and C. Lanes past the last channel stay zero."""
        _load_tile(u, bi, c0, cw, t0, tl, ut)
        _load_tile(delta, bi, c0, cw, t0, tl, pt)
        _steps_tile(pt, bias, tl, softplus, dt)
        _product_tile(dt, ut, tl, dut)
        if has_z:
            _load_tile(z, bi, c0, cw, t0, tl, zt)
        _load_states(Bm, bi, t0, tl, Bt)
        _load_states(Cm, bi, t0, tl, Ct)

    @numba.njit(**_jit)
    def _output_tile(yt, ut, zt, D, tl, has_z):
        """y = (C.h + D u) * silu(z), in place over the first tl rows."""
        W = yt.shape[1]
        for tt in range(tl):
            yr = yt[tt]
            ur = ut[tt]
            if has_z:
                zr = zt[tt]
                for i in range(W):
                    zz = zr[i]
                    yr[i] = (yr[i] + D[i] * ur[i]) * (zz / (_ONE + _exp(-zz)))
            else:
                for i in range(W):
                    yr[i] = yr[i] + D[i] * ur[i]

    @numba.njit(**_jit)
    def _gate_grads(got, yt, ut, zt, D, s0, sl, has_z, gyt, gzt):
        """Rows s0..s0+sl: the gradient of C.h (gy, through the gate) and of z; yt holds C.h by chunk row."""
        W = got.shape[1]
        for tt in range(sl):
            gor = got[s0 + tt]
            gyr = gyt[s0 + tt]
            if has_z:
                zr = zt[s0 + tt]
                ur = ut[s0 + tt]
                yr = yt[tt]
                gzr = gzt[s0 + tt]
                for i in range(W):
                    zz = zr[i]
                    sg = _ONE / (_ONE + _exp(-zz))
                    go = gor[i]
                    gzr[i] = go * (yr[i] + D[i] * ur[i]) * sg * (_ONE + zz * (_ONE - sg))
                    gyr[i] = go * zz * sg
            else:
                for i in range(W):
                    gyr[i] = gor[i]

    @numba.njit(**_jit)
    def _input_grads(gyt, gdut, gdvt, ut, dt, pt, D, tl, softplus, gut, gdt, gD, gbias):
        """From the adjoint's per-step sums: gu = gy D + gdu dt; gdelta = (gdu u + gdv) * softplus'(pt);
        the float64 sums over time for D and the bias."""
        W = ut.shape[1]
        for tt in range(tl):
            gyr = gyt[tt]
            gdur = gdut[tt]
            gdvr = gdvt[tt]
            ur = ut[tt]
            dtr = dt[tt]
            gur = gut[tt]
            gdr = gdt[tt]
            for i in range(W):
                gur[i] = gyr[i] * D[i] + gdur[i] * dtr[i]
                gdr[i] = gdur[i] * ur[i] + gdvr[i]
            if softplus:
                pr = pt[tt]
                for i in range(W):
                    gdr[i] = gdr[i] / (_ONE + _exp(-pr[i]))
            for i in range(W):
                gD[i] += gyr[i] * ur[i]
                gbias[i] += gdr[i]

    @numba.njit(**_jit)
    def _state_step_inplace(dt, du, Bn, Cn, A, h, y):
        """One step of the recurrence for a group of W channels, all N states: h = exp(dt A) h + du B
        (in place), y += C.h. h, A: (N, W); dt, du, y: (W,); Bn, Cn: (N,). (Unrolling over pairs of
        states, to share the loads of dt, du and y, measured 1.1-2x slower: LLVM vectorised it worse.)"""
        N, W = h.shape
        for n in range(N):
            bn = Bn[n]
            cn = Cn[n]
            hr = h[n]
            Ar = A[n]
            for i in range(W):
                hv = _exp(dt[i] * Ar[i]) * hr[i] + du[i] * bn
                hr[i] = hv
                y[i] += hv * cn

    @numba.njit(**_jit)
    def _state_step(dt, du, Bn, Cn, A, hp, hn, a, y):
        """`_state_step_inplace` into a new state hn from hp, keeping the decays in `a` (backward). A copy
        rather than one function with hp = hn: LLVM's runtime overlap check would then send the in-place
        call down its scalar loop."""
        N, W = hp.shape
        for n in range(N):
            bn = Bn[n]
            cn = Cn[n]
            hpr = hp[n]
            hnr = hn[n]
            Ar = A[n]
            ar = a[n]
            for i in range(W):
                ai = _exp(dt[i] * Ar[i])
                hv = ai * hpr[i] + du[i] * bn
                ar[i] = ai
                hnr[i] = hv
                y[i] += hv * cn

    @numba.njit(**{**_jit, "fastmath": {"contract", "reassoc"}})
    def _adjoint_step(gy, du, dt, Bn, Cn, hp, hn, a, A, lam, gA, gdu, gdv, gB, gC):
        """One step of the adjoint recurrence (lam: a_{t+1} times the adjoint of h_{t+1}, updated in
        place), with every gradient it feeds: gdu, gdv (W,) summed over states, gA (N, W) summed over
        time, gB, gC (N,) summed over channels. This function alone may reassociate (it has no exp),
        so those sums over channels vectorise as plain reductions."""
        N, W = hp.shape
        for i in range(W):
            gdu[i] = _ZERO
            gdv[i] = _ZERO
        for n in range(N):
            bn = Bn[n]
            cn = Cn[n]
            hpr = hp[n]
            hnr = hn[n]
            ar = a[n]
            Ar = A[n]
            lamr = lam[n]
            gAr = gA[n]
            sb = _ZERO
            sc = _ZERO
            for i in range(W):
                g = gy[i]
                lm = g * cn + lamr[i]
                ai = ar[i]
                r = lm * ai * hpr[i]  # d loss / d (dt A)
                gdu[i] += lm * bn
                gdv[i] += r * Ar[i]
                gAr[i] += r * dt[i]
                sb += lm * du[i]
                sc += g * hnr[i]
                lamr[i] = ai * lm
            gB[n] = sb
            gC[n] = sc

    @numba.njit(**_jit)
    def _fill(x, v):
        """x[...] = v for a C-contiguous array (an explicit loop: array expressions inside a parallel
        kernel become nested parallel loops)."""
        flat = x.reshape(x.size)
        for i in range(flat.size):
            flat[i] = v

    @numba.njit(**_jit)
    def _fold(acc, part):
        """acc += part; part = 0 (float32 partial sums into float64 totals)."""
        a = acc.reshape(acc.size)
        p = part.reshape(part.size)
        for i in range(p.size):
            a[i] += p[i]
            p[i] = _ZERO

    @numba.njit(**_jit)
    def _get_state(src, bi, k, c0, h):
        """h = src[bi, k, :, c0:c0 + W] (checkpoints), element by element."""
        N, W = h.shape
        for n in range(N):
            for i in range(W):
                h[n, i] = src[bi, k, n, c0 + i]

    @numba.njit(**_jit)
    def _put_state(h, dst, bi, k, c0):
        """dst[bi, k, :, c0:c0 + W] = h, element by element."""
        N, W = h.shape
        for n in range(N):
            for i in range(W):
                dst[bi, k, n, c0 + i] = h[n, i]

    @numba.njit(**_jit)
    def _put_rows(src, dst, bi, g, t0, tl):
        """dst[bi, g, t0 + tt, :] = src[tt] (per-step sums over the group's channels)."""
        for tt in range(tl):
            for n in range(src.shape[1]):
                dst[bi, g, t0 + tt, n] = src[tt, n]

    @numba.njit(**_jit)
    def _unit_setup(A, D, bias, glast, use_glast, bi, c0, cw, Aw, Dw, bw, h):
        """A work unit's channel parameters (zero past the last channel) and its starting state."""
        N, W = Aw.shape
        for n in range(N):
            for i in range(cw):
                Aw[n, i] = A[n, c0 + i]
            if use_glast:
                for i in range(W):
                    h[n, i] = glast[bi, n, c0 + i]
        for i in range(cw):
            Dw[i] = D[c0 + i]
            bw[i] = bias[c0 + i]

    @numba.njit(_fwd_sig, parallel=True, **_jit)
    def _scan_fwd(u, delta, bias, A, Bm, Cm, D, z, has_z, softplus, W, K, T, out, last, ckpt):
        """u, delta, z, out: (b, d, L) of any strides; bias, D: (d,); A: (n, d); Bm, Cm: (b, n, L);
        last: (b, n, dp); ckpt: (b, L / K, n, dp) or empty (no backward), dp = d rounded up to W.
        One work unit is one (batch, group of W channels); it walks L in tiles of T steps (a multiple
        of K), each loaded once into (T, W) tiles, so the hot loop reads nothing else. (Tiles of 128
        steps read a (b, d, L) tensor 2x faster than tiles of 32: longer runs along each row.)"""
        b, d, L = u.shape
        N = A.shape[0]
        G = -(-d // W)
        keep = ckpt.shape[0] > 0
        for unit in prange(b * G):
            bi = unit // G
            c0 = (unit % G) * W
            cw = min(W, d - c0)
            h = np.zeros((N, W), np.float32)
            Aw = np.zeros((N, W), np.float32)
            Dw = np.zeros(W, np.float32)
            bw = np.zeros(W, np.float32)
            _unit_setup(A, D, bias, last, False, bi, c0, cw, Aw, Dw, bw, h)
            ut = np.zeros((T, W), np.float32)
            pt = np.zeros((T, W), np.float32)
            dt = np.zeros((T, W), np.float32)
            dut = np.zeros((T, W), np.float32)
            zt = np.zeros((T, W), np.float32)
            yt = np.zeros((T, W), np.float32)
            Bt = np.empty((T, N), np.float32)
            Ct = np.empty((T, N), np.float32)
            for t0 in range(0, L, T):
                tl = min(T, L - t0)
                _load_inputs(u, delta, z, Bm, Cm, bw, bi, c0, cw, t0, tl, softplus, has_z, ut, pt, dt, dut, zt, Bt, Ct)
                _fill(yt, _ZERO)
                for tt in range(tl):
                    if keep and tt % K == 0:
                        _put_state(h, ckpt, bi, (t0 + tt) // K, c0)
                    _state_step_inplace(dt[tt], dut[tt], Bt[tt], Ct[tt], Aw, h, yt[tt])
                _output_tile(yt, ut, zt, Dw, tl, has_z)
                _store_tile(yt, out, bi, c0, cw, t0, tl)
            for n in range(N):
                for i in range(W):
                    last[bi, n, c0 + i] = h[n, i]

    @numba.njit(_bwd_sig, parallel=True, **_jit)
    def _scan_bwd(u, delta, bias, A, Bm, Cm, D, z, has_z, softplus, gout, glast, W, K, T, ckpt,
                  gu, gdelta, gz, gA, gD, gbias, gB, gC):
        """Gradients of `_scan_fwd`. gu, gdelta, gz: (b, d, L) of any strides (gdelta is the gradient
        of delta itself, through the softplus); gA: (b, n, dp), gD, gbias: (b, dp), float64 sums over
        time; gB, gC: (b, G, L, n) partial sums per channel group; glast: (b, n, dp).
        Per tile of T steps (loaded as in the forward), per chunk of K steps from the last: recompute
        the states and decays from the chunk's checkpoint, then run the adjoint back through it."""
        b, d, L = u.shape
        N = A.shape[0]
        G = -(-d // W)
        for unit in prange(b * G):
            bi = unit // G
            g = unit % G
            c0 = g * W
            cw = min(W, d - c0)
            Aw = np.zeros((N, W), np.float32)
            lam = np.zeros((N, W), np.float32)  # a_{t+1} * adjoint_{t+1}, carried backwards
            Dw = np.zeros(W, np.float32)
            bw = np.zeros(W, np.float32)
            _unit_setup(A, D, bias, glast, True, bi, c0, cw, Aw, Dw, bw, lam)
            ut = np.zeros((T, W), np.float32)
            pt = np.zeros((T, W), np.float32)
            dt = np.zeros((T, W), np.float32)
            dut = np.zeros((T, W), np.float32)
            zt = np.zeros((T, W), np.float32)
            got = np.zeros((T, W), np.float32)
            gyt = np.zeros((T, W), np.float32)
            gdut = np.zeros((T, W), np.float32)
            gdvt = np.zeros((T, W), np.float32)
            gut = np.zeros((T, W), np.float32)
            gdt = np.zeros((T, W), np.float32)
            gzt = np.zeros((T, W), np.float32)
            Bt = np.empty((T, N), np.float32)
            Ct = np.empty((T, N), np.float32)
            gBt = np.empty((T, N), np.float32)
            gCt = np.empty((T, N), np.float32)
            hbuf = np.empty((K + 1, N, W), np.float32)
            abuf = np.empty((K, N, W), np.float32)
            ybuf = np.zeros((K, W), np.float32)
            gA32 = np.zeros((N, W), np.float32)
            gA64 = np.zeros((N, W), np.float64)
            gD64 = np.zeros(W, np.float64)
            gb64 = np.zeros(W, np.float64)
            for t0 in range(-(-L // T) * T - T, -1, -T):
                tl = min(T, L - t0)
                _load_inputs(u, delta, z, Bm, Cm, bw, bi, c0, cw, t0, tl, softplus, has_z, ut, pt, dt, dut, zt, Bt, Ct)
                _load_tile(gout, bi, c0, cw, t0, tl, got)
                for s0 in range((tl - 1) // K * K, -1, -K):  # the tile's checkpoint chunks, last first
                    sl = min(K, tl - s0)
                    _get_state(ckpt, bi, (t0 + s0) // K, c0, hbuf[0])
                    _fill(ybuf, _ZERO)
                    for tt in range(sl):  # recompute the chunk: states, decays, C.h
                        r = s0 + tt
                        _state_step(dt[r], dut[r], Bt[r], Ct[r], Aw, hbuf[tt], hbuf[tt + 1], abuf[tt], ybuf[tt])
                    _gate_grads(got, ybuf, ut, zt, Dw, s0, sl, has_z, gyt, gzt)
                    for tt in range(sl - 1, -1, -1):  # the adjoint, backwards through the chunk
                        r = s0 + tt
                        _adjoint_step(gyt[r], dut[r], dt[r], Bt[r], Ct[r], hbuf[tt], hbuf[tt + 1], abuf[tt], Aw,
                                      lam, gA32, gdut[r], gdvt[r], gBt[r], gCt[r])
                    _fold(gA64, gA32)  # the chunk's float32 sums into float64
                _put_rows(gBt, gB, bi, g, t0, tl)
                _put_rows(gCt, gC, bi, g, t0, tl)
                _input_grads(gyt, gdut, gdvt, ut, dt, pt, Dw, tl, softplus, gut, gdt, gD64, gb64)
                _store_tile(gut, gu, bi, c0, cw, t0, tl)
                _store_tile(gdt, gdelta, bi, c0, cw, t0, tl)
                if has_z:
                    _store_tile(gzt, gz, bi, c0, cw, t0, tl)
            for n in range(N):
                for i in range(W):
                    gA[bi, n, c0 + i] = gA64[n, i]
            for i in range(W):
                gD[bi, c0 + i] = gD64[i]
                gbias[bi, c0 + i] = gb64[i]


def _group_width(b: int, d: int) -> int:
    """Channels per work unit: a multiple of LANES, with enough units for every thread."""
    threads = numba.get_num_threads() if HAVE_NUMBA else 1
    blocks = -(-d // LANES)
    groups = max(1, min(blocks, -(-threads // b)))
    while blocks % groups:
        groups += 1
    return blocks // groups * LANES


_compiled: bool | None = None
_lock = threading.Lock()  # the workqueue layer must not be entered by two threads at once


def available() -> bool:
    """numba imports and the kernels compile and run (checked once, on a tiny problem)."""
    global _compiled
    if _compiled is None:
        if not HAVE_NUMBA or os.environ.get("RTGEN_DISABLE_NUMBA"):
            _compiled = False
        else:
            try:
                g = torch.Generator().manual_seed(0)
                u = torch.randn(1, 4, 5, generator=g)
                t = dict(u=u, delta=torch.rand(1, 4, 5, generator=g), A=-torch.rand(4, 2, generator=g),
                         B=torch.randn(1, 2, 5, generator=g), C=torch.randn(1, 2, 5, generator=g))
                _FusedScan.apply(t["u"], t["delta"], t["A"], t["B"], t["C"], None, None, None, False, False)
                _compiled = True
            except Exception:  # no compiler, an LLVM failure, ...
                _compiled = False
    return _compiled


def supports(u, delta, A, B, C, D=None, z=None, delta_bias=None, h0=None) -> bool:
    """Whether the fused kernel handles these arguments (else use the PyTorch path)."""
    ts = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if any(t.device.type != "cpu" or t.is_complex() for t in ts):
        return False
    if any(t.dtype not in (torch.float32, torch.bfloat16, torch.float16) for t in ts):
        return False
    if h0 is not None or A.dim() != 2 or u.dim() != 3:
        return False
    for M in (B, C):
        if not (M.dim() == 3 or (M.dim() == 4 and M.shape[1] == 1)):
            return False
    return True


def _f32_view(t: torch.Tensor) -> np.ndarray:
    """A float32 NumPy view of t (a copy only for other dtypes); any strides, no layout change."""
    return (t if t.dtype == torch.float32 else t.float()).detach().numpy()


def _states(M: torch.Tensor) -> torch.Tensor:
    """B or C: (b, n, L) or (b, 1, n, L) -> (b, n, L), any strides."""
    return M[:, 0] if M.dim() == 4 else M


def _channel_vector(v, d: int) -> np.ndarray:
    return _f32_view(v.detach()) if v is not None else np.zeros(d, np.float32)


def _bld_empty(b: int, d: int, L: int) -> torch.Tensor:
    """A (b, d, L) float32 tensor stored as (b, L, d): the layout of the projections around the scan
    (dt from dt_proj, z from in_proj, y into out_proj), so the block needs no copies."""
    return torch.empty(b, L, d).transpose(1, 2)


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        b, d, L = u.shape
        n = A.shape[1]
        W = _group_width(b, d)
        dp = -(-d // W) * W
        K = CHECKPOINT
        needs = any(ctx.needs_input_grad)
        At = A.detach().float().t().contiguous()
        Bs, Cs = _states(B), _states(C)
        bias, Dv = _channel_vector(delta_bias, d), _channel_vector(D, d)
        out = _bld_empty(b, d, L)
        last = u.new_empty((b, n, dp), dtype=torch.float32)
        ckpt = u.new_empty((b, -(-L // K), n, dp) if needs else (0, 0, 0, 0), dtype=torch.float32)
        zv = _f32_view(z) if z is not None else np.empty((0, 0, 0), np.float32)
        with _lock:
            _scan_fwd(_f32_view(u), _f32_view(delta), bias, At.numpy(), _f32_view(Bs), _f32_view(Cs), Dv, zv,
                      z is not None, bool(delta_softplus), W, K, TILE, out.numpy(), last.numpy(), ckpt.numpy())
        if needs:
            ctx.save_for_backward(u, delta, At, Bs, Cs, D, z, delta_bias, ckpt)
            ctx.meta = (W, K, bool(delta_softplus), B.dim(), C.dim(), A.dtype)
        return out.to(u.dtype), last[..., :d].transpose(1, 2)

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, At, Bs, Cs, D, z, delta_bias, ckpt = ctx.saved_tensors
        W, K, softplus, Bdim, Cdim, Adtype = ctx.meta
        b, d, L = u.shape
        n = At.shape[0]
        dp = ckpt.shape[-1]
        G = dp // W
        go = gy if gy is not None else torch.zeros(b, d, L)
        gl = torch.zeros((b, n, dp))
        if glast is not None:
            gl[..., :d] = glast.transpose(1, 2)
        gu, gdelta = _bld_empty(b, d, L), _bld_empty(b, d, L)
        gz = _bld_empty(b, d, L) if z is not None else torch.empty((0, 0, 0))
        gA = torch.empty((b, n, dp), dtype=torch.float64)
        gD = torch.empty((b, dp), dtype=torch.float64)
        gbias = torch.empty((b, dp), dtype=torch.float64)
        gB = torch.empty((b, G, L, n))
        gC = torch.empty((b, G, L, n))
        zv = _f32_view(z) if z is not None else np.empty((0, 0, 0), np.float32)
        with _lock:
            _scan_bwd(_f32_view(u), _f32_view(delta), _channel_vector(delta_bias, d), At.numpy(), _f32_view(Bs),
                      _f32_view(Cs), _channel_vector(D, d), zv, z is not None, softplus, _f32_view(go), gl.numpy(),
                      W, K, TILE, ckpt.numpy(), gu.numpy(), gdelta.numpy(), gz.numpy(), gA.numpy(), gD.numpy(),
                      gbias.numpy(), gB.numpy(), gC.numpy())
        gBt = gB.sum(1).transpose(1, 2)
        gCt = gC.sum(1).transpose(1, 2)
        if Bdim == 4:
            gBt = gBt.unsqueeze(1)
        if Cdim == 4:
            gCt = gCt.unsqueeze(1)
        like = lambda g, x: g.to(x.dtype) if x is not None else None  # noqa: E731  gradients in the inputs' dtypes
        return (
            like(gu, u), like(gdelta, delta), gA.sum(0).t()[:d].to(Adtype), like(gBt, Bs), like(gCt, Cs),
            like(gD.sum(0)[:d], D) if D is not None else None,
            like(gz, z) if z is not None else None,
            like(gbias.sum(0)[:d], delta_bias) if delta_bias is not None else None, None, None,
        )


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """`selective_scan_ref` semantics on the fused numba kernel (CPU; float32, or bf16/fp16 computed in
    float32 and returned in the input dtype). Gradients for u, delta, A, B, C, D, z and delta_bias.
    Inputs may have any strides: the kernel reads (time, channel) tiles itself, so transposed views
    (as a Mamba block produces them) cost no copies."""
    with torch.autocast("cpu", enabled=False):
        y, last = _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return (y, last) if return_last_state else y


def scan_flops(b: int, d: int, n: int, L: int, backward: bool = False) -> float:
    """Floating-point operations of the scan, counting exp as one (mamba_ssm's 9 b L d n for the forward)."""
    return (9 + (17 if backward else 0)) * b * d * n * L


def scan_bytes(b: int, d: int, n: int, L: int, backward: bool = False) -> float:
    """Minimum memory traffic in fp32: u, delta, z, out (b d L) and B, C (b n L); backward reads those
    and gout again and writes gu, gdelta, gz, gB, gC."""
    fwd = 4 * (4 * b * d * L + 2 * b * n * L)
    return fwd + (4 * (7 * b * d * L + 4 * b * n * L) if backward else 0)


__all__ = ["available", "scan_bytes", "scan_flops", "selective_scan_fused", "supports"]
