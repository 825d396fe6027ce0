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
import torch.nn.functional as F

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

    _jit = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")  # no ZeroDivisionError branches

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

    @numba.njit(parallel=True, **_jit)
    def _scan_fwd(u, dt, A, Bm, Cm, D, z, has_z, W, K, out, last, ckpt):
        """u, dt, z, out: (b, L, d); A: (n, d); Bm, Cm: (b, L, n); D: (d,); last: (b, n, d);
        ckpt: (b, nchunks, n, d) or empty (no backward). dt already has bias and softplus.
        (Inner loops index with bare loop variables and row views so they vectorise.)"""
        b, L, d = u.shape
        N = A.shape[0]
        G = d // W
        keep = ckpt.shape[0] > 0
        for unit in prange(b * G):
            bi = unit // G
            c0 = (unit % G) * W
            h = np.zeros((N, W), np.float32)
            Aw = np.empty((N, W), np.float32)
            for n in range(N):
                Ar = A[n, c0:c0 + W]
                for i in range(W):
                    Aw[n, i] = Ar[i]
            Dw = D[c0:c0 + W].copy()
            dtv = np.empty(W, np.float32)
            duv = np.empty(W, np.float32)
            acc = np.empty(W, np.float32)
            for t in range(L):
                if keep and t % K == 0:
                    for n in range(N):
                        cr = ckpt[bi, t // K, n, c0:c0 + W]
                        hr = h[n]
                        for i in range(W):
                            cr[i] = hr[i]
                ut = u[bi, t, c0:c0 + W]
                dtt = dt[bi, t, c0:c0 + W]
                for i in range(W):
                    x = dtt[i]
                    dtv[i] = x
                    duv[i] = x * ut[i]
                    acc[i] = _ZERO
                for n in range(N):
                    bn = Bm[bi, t, n]
                    cn = Cm[bi, t, n]
                    hr = h[n]
                    Ar = Aw[n]
                    for i in range(W):
                        hv = _exp(dtv[i] * Ar[i]) * hr[i] + duv[i] * bn
                        hr[i] = hv
                        acc[i] += hv * cn
                ot = out[bi, t, c0:c0 + W]
                if has_z:
                    zt = z[bi, t, c0:c0 + W]
                    for i in range(W):
                        zz = zt[i]
                        ot[i] = (acc[i] + Dw[i] * ut[i]) * (zz / (_ONE + _exp(-zz)))
                else:
                    for i in range(W):
                        ot[i] = acc[i] + Dw[i] * ut[i]
            for n in range(N):
                lr = last[bi, n, c0:c0 + W]
                hr = h[n]
                for i in range(W):
                    lr[i] = hr[i]

    @numba.njit(parallel=True, **_jit)
    def _scan_bwd(u, dt, A, Bm, Cm, D, z, has_z, gout, glast, W, K, ckpt, gu, gdt, gz, gA, gD, gB, gC):
        """Gradients of `_scan_fwd` (dt after softplus). gu, gdt, gz: (b, L, d); gA: (b, n, d) float64;
        gD: (b, d) float64; gB, gC: (b, G, L, n) partial sums per channel group; glast: (b, n, d).
        Channel vectors are laid out (W // LANES, LANES) so that the sums over channels for B and C
        stay in LANES partial sums (no horizontal reduction in the inner loop)."""
        b, L, d = u.shape
        N = A.shape[0]
        G = d // W
        nb = W // LANES
        nchunks = (L + K - 1) // K
        for unit in prange(b * G):
            bi = unit // G
            g = unit % G
            c0 = g * W
            Aw = np.empty((N, nb, LANES), np.float32)
            lam = np.empty((N, nb, LANES), np.float32)  # a_{t+1} * adjoint_{t+1}, carried backwards
            for n in range(N):
                Ar = A[n, c0:c0 + W]
                gr = glast[bi, n, c0:c0 + W]
                for ib in range(nb):
                    for l in range(LANES):
                        Aw[n, ib, l] = Ar[ib * LANES + l]
                        lam[n, ib, l] = gr[ib * LANES + l]
            Dw = D[c0:c0 + W].copy()
            hbuf = np.empty((K + 1, N, nb, LANES), np.float32)
            abuf = np.empty((K, N, nb, LANES), np.float32)
            ybuf = np.empty((K, W), np.float32)
            lB = np.zeros((K, N, LANES), np.float32)
            lC = np.zeros((K, N, LANES), np.float32)
            gA32 = np.zeros((N, nb, LANES), np.float32)
            gA64 = np.zeros((N, nb, LANES), np.float64)
            gD64 = np.zeros(W, np.float64)
            dtv = np.empty(W, np.float32)
            duv = np.empty(W, np.float32)
            gyv = np.empty(W, np.float32)
            gdu = np.empty(W, np.float32)
            gdv = np.empty(W, np.float32)
            acc = np.empty(W, np.float32)
            dtl = dtv.reshape((nb, LANES))
            dul = duv.reshape((nb, LANES))
            gyl = gyv.reshape((nb, LANES))
            gdul = gdu.reshape((nb, LANES))
            gdvl = gdv.reshape((nb, LANES))
            for c in range(nchunks - 1, -1, -1):
                t0 = c * K
                t1 = min(L, t0 + K)
                for n in range(N):
                    cr = ckpt[bi, c, n, c0:c0 + W]
                    for ib in range(nb):
                        for l in range(LANES):
                            hbuf[0, n, ib, l] = cr[ib * LANES + l]
                # recompute the chunk: states, decays, y (before D and gating)
                for tt in range(t1 - t0):
                    t = t0 + tt
                    ut = u[bi, t, c0:c0 + W]
                    dtt = dt[bi, t, c0:c0 + W]
                    for i in range(W):
                        x = dtt[i]
                        dtv[i] = x
                        duv[i] = x * ut[i]
                        acc[i] = _ZERO
                    accl = acc.reshape((nb, LANES))
                    for n in range(N):
                        bn = Bm[bi, t, n]
                        cn = Cm[bi, t, n]
                        hp = hbuf[tt, n]
                        hn = hbuf[tt + 1, n]
                        ar = abuf[tt, n]
                        Ar = Aw[n]
                        for ib in range(nb):
                            for l in range(LANES):
                                a = _exp(dtl[ib, l] * Ar[ib, l])
                                hv = a * hp[ib, l] + dul[ib, l] * bn
                                ar[ib, l] = a
                                hn[ib, l] = hv
                                accl[ib, l] += hv * cn
                    yr = ybuf[tt]
                    for i in range(W):
                        yr[i] = acc[i]
                # adjoint, backwards through the chunk
                for tt in range(t1 - t0 - 1, -1, -1):
                    t = t0 + tt
                    ut = u[bi, t, c0:c0 + W]
                    dtt = dt[bi, t, c0:c0 + W]
                    got = gout[bi, t, c0:c0 + W]
                    yr = ybuf[tt]
                    if has_z:
                        zt = z[bi, t, c0:c0 + W]
                        gzt = gz[bi, t, c0:c0 + W]
                        for i in range(W):
                            zz = zt[i]
                            s = _ONE / (_ONE + _exp(-zz))
                            go = got[i]
                            gzt[i] = go * (yr[i] + Dw[i] * ut[i]) * s * (_ONE + zz * (_ONE - s))
                            gyv[i] = go * zz * s
                    else:
                        for i in range(W):
                            gyv[i] = got[i]
                    for i in range(W):
                        x = dtt[i]
                        dtv[i] = x
                        duv[i] = x * ut[i]
                        gdu[i] = _ZERO
                        gdv[i] = _ZERO
                        gD64[i] += gyv[i] * ut[i]
                    for n in range(N):
                        bn = Bm[bi, t, n]
                        cn = Cm[bi, t, n]
                        hp = hbuf[tt, n]
                        hn = hbuf[tt + 1, n]
                        ar = abuf[tt, n]
                        Ar = Aw[n]
                        lamr = lam[n]
                        gAr = gA32[n]
                        lBr = lB[tt, n]
                        lCr = lC[tt, n]
                        for ib in range(nb):
                            for l in range(LANES):
                                gy = gyl[ib, l]
                                lm = gy * cn + lamr[ib, l]
                                a = ar[ib, l]
                                r = lm * a * hp[ib, l]  # d loss / d (dt A)
                                gdul[ib, l] += lm * bn
                                gdvl[ib, l] += r * Ar[ib, l]
                                gAr[ib, l] += r * dtl[ib, l]
                                lBr[l] += lm * dul[ib, l]
                                lCr[l] += gy * hn[ib, l]
                                lamr[ib, l] = a * lm
                    gut = gu[bi, t, c0:c0 + W]
                    gdtt = gdt[bi, t, c0:c0 + W]
                    for i in range(W):
                        gut[i] = gyv[i] * Dw[i] + gdu[i] * dtv[i]
                        gdtt[i] = gdu[i] * ut[i] + gdv[i]
                # fold the lanes and the chunk's float32 sums
                for tt in range(t1 - t0):
                    gBr = gB[bi, g, t0 + tt]
                    gCr = gC[bi, g, t0 + tt]
                    for n in range(N):
                        lBr = lB[tt, n]
                        lCr = lC[tt, n]
                        sb = _ZERO
                        sc = _ZERO
                        for l in range(LANES):
                            sb += lBr[l]
                            sc += lCr[l]
                            lBr[l] = _ZERO
                            lCr[l] = _ZERO
                        gBr[n] = sb
                        gCr[n] = sc
                for n in range(N):
                    for ib in range(nb):
                        for l in range(LANES):
                            gA64[n, ib, l] += gA32[n, ib, l]
                            gA32[n, ib, l] = _ZERO
            for n in range(N):
                gr = gA[bi, n, c0:c0 + W]
                for ib in range(nb):
                    for l in range(LANES):
                        gr[ib * LANES + l] = gA64[n, ib, l]
            gDr = gD[bi, c0:c0 + W]
            for i in range(W):
                gDr[i] = gD64[i]


def _group_width(b: int, d: int) -> int:
    """Channels per work unit: a multiple of LANES, with enough units for every thread."""
    threads = numba.get_num_threads() if HAVE_NUMBA else 1
    blocks = d // LANES
    groups = max(1, min(blocks, -(-threads // b)))
    while blocks % groups:
        groups += 1
    return d // groups


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


def _bln(t: torch.Tensor, d_pad: int) -> torch.Tensor:
    """(b, d, L) -> (b, L, d_pad) contiguous float32 (channels zero-padded to d_pad)."""
    t = t.transpose(1, 2)
    if d_pad != t.shape[-1]:
        t = F.pad(t, (0, d_pad - t.shape[-1]))
    return t.to(torch.float32).contiguous()


def _state_major(M: torch.Tensor) -> torch.Tensor:
    """B or C: (b, n, L) or (b, 1, n, L) -> (b, L, n) contiguous float32."""
    if M.dim() == 4:
        M = M[:, 0]
    return M.transpose(1, 2).to(torch.float32).contiguous()


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        b, d, L = u.shape
        n = A.shape[1]
        dp = -(-d // LANES) * LANES
        W = _group_width(b, dp)
        ub = _bln(u, dp)
        pre = _bln(delta, dp)
        if delta_bias is not None:
            pre = pre + F.pad(delta_bias.float(), (0, dp - d))
        dtb = F.softplus(pre) if delta_softplus else pre
        At = F.pad(A.float(), (0, 0, 0, dp - d)).t().contiguous()
        Bb, Cb = _state_major(B), _state_major(C)
        Dp = F.pad(D.float(), (0, dp - d)) if D is not None else ub.new_zeros(dp)
        zb = _bln(z, dp) if z is not None else ub.new_empty((0, 0, 0))
        needs = any(ctx.needs_input_grad)
        K = CHECKPOINT
        ckpt = ub.new_empty((b, -(-L // K), n, dp) if needs else (0, 0, 0, 0))
        out = torch.empty_like(ub)
        last = ub.new_empty((b, n, dp))
        with _lock:
            _scan_fwd(ub.numpy(), dtb.numpy(), At.numpy(), Bb.numpy(), Cb.numpy(), Dp.numpy(), zb.numpy(),
                  z is not None, W, K, out.numpy(), last.numpy(), ckpt.numpy())
        if needs:
            ctx.save_for_backward(ub, pre, dtb, At, Bb, Cb, Dp, zb, ckpt)
            ctx.meta = (d, dp, W, K, delta_softplus, z is not None, D is not None, delta_bias is not None,
                        B.dim(), C.dim(), u.dtype)
        y = out[..., :d].transpose(1, 2).to(u.dtype)
        state = last[..., :d].transpose(1, 2)
        return y, state

    @staticmethod
    def backward(ctx, gy, glast):
        ub, pre, dtb, At, Bb, Cb, Dp, zb, ckpt = ctx.saved_tensors
        d, dp, W, K, softplus, has_z, has_D, has_bias, Bdim, Cdim, dtype = ctx.meta
        b, L, _ = ub.shape
        n = At.shape[0]
        go = _bln(gy, dp) if gy is not None else torch.zeros_like(ub)
        gl = ub.new_zeros((b, n, dp))
        if glast is not None:
            gl[..., :d] = glast.transpose(1, 2)
        G = dp // W
        gu, gdt = torch.empty_like(ub), torch.empty_like(ub)
        gz = torch.empty_like(ub) if has_z else ub.new_empty((0, 0, 0))
        gA = torch.empty((b, n, dp), dtype=torch.float64)
        gD = torch.empty((b, dp), dtype=torch.float64)
        gB = ub.new_empty((b, G, L, n))
        gC = ub.new_empty((b, G, L, n))
        with _lock:
            _scan_bwd(ub.numpy(), dtb.numpy(), At.numpy(), Bb.numpy(), Cb.numpy(), Dp.numpy(), zb.numpy(), has_z,
                  go.numpy(), gl.numpy(), W, K, ckpt.numpy(), gu.numpy(), gdt.numpy(), gz.numpy(), gA.numpy(),
                  gD.numpy(), gB.numpy(), gC.numpy())
        if softplus:
            gdt = gdt * torch.sigmoid(pre)
        g_bias = gdt.sum((0, 1))[:d] if has_bias else None
        back = lambda t: t[..., :d].transpose(1, 2)  # noqa: E731  (b, L, dp) -> (b, d, L)
        gBt = gB.sum(1).transpose(1, 2)
        gCt = gC.sum(1).transpose(1, 2)
        if Bdim == 4:
            gBt = gBt.unsqueeze(1)
        if Cdim == 4:
            gCt = gCt.unsqueeze(1)
        return (
            back(gu), back(gdt), gA.sum(0).t()[:d].float(), gBt, gCt,
            gD.sum(0)[:d].float() if has_D else None,
            back(gz) if has_z else None,
            g_bias, None, None,
        )


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """`selective_scan_ref` semantics on the fused numba kernel (CPU; float32, or bf16/fp16 computed in
    float32 and returned in the input dtype). Gradients for u, delta, A, B, C, D, z and delta_bias."""
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
