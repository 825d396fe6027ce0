"""The numba kernels of the fused CPU selective scan (`rtgen.ssm.fused` wraps them for PyTorch).

Same semantics as `selective_scan_ref` for real A (d, n) and "variable" B, C of shape (b, n, L)
(or (b, 1, n, L)): delta_bias and softplus, D skip, SiLU(z) gating, the last state.

Layout and threading. The kernels read every per-channel tensor where it lies (`fused._kernel_layout`):
time-major rows, so that at each time step the channels are contiguous (a slice of a wider
projection, such as z in the Mamba block's in_proj output, is read from its channel offset), or
channel-major (b, d, L) memory; any other layout is copied once. A work unit owns a group of W
channels (a multiple of 16, one AVX-512 vector of fp32) and runs one pass over L in tiles of T
steps. Work units are (batch, channel group) pairs, run in parallel with `prange`. Optionally the
unit also forms delta from the block's low-rank step and dt projection weight (`dt_weight`), per tile.

Registers. The recurrences themselves (`rtgen.ssm.fused_recurrences`) are written on sixteen-lane
vectors (`rtgen.ssm.simd`): sixteen channels and four states are carried in registers across a
chunk of steps. This module holds the tiles around them and the two parallel kernels.

exp. The decay exp(delta A) is needed for every (t, channel, state) element; it and the gates' exps
are computed in plain arithmetic, so that the loops vectorise (`rtgen.ssm.fused_math`).

Backward. The forward stores the state every K steps (memory b * d * n * L / K), the steps dt (so the
backward needs no softplus) and, when gated, the ungated output C.h + D u, which the gradient of z
needs (as mamba_ssm keeps it). The backward walks the chunks from the end: it recomputes the chunk's
states and decays from the checkpoint into a small buffer, laid out so that each (channel vector,
state) is a contiguous sequence in time, then runs the adjoint recurrence backwards through the
chunk, forming every gradient on the way. Sums over channels (the gradients of B and C) are summed
as vectors, reduced sixteen states at a time and written as partial sums per channel group. Sums over
L (gradients of A, D, the bias and the dt projection) go through float32 per chunk or tile into
float64.

Softplus (with its sigmoid derivative) runs inside the kernels; the fp32 up-cast of bf16 or fp16
inputs runs in PyTorch around them.
"""

from __future__ import annotations

import numpy as np

from rtgen.ssm.fused_math import _LN2, _LOG2E, _ONE, _ZERO, HAVE_NUMBA  # noqa: F401  (_LOG2E: for fused)
from rtgen.ssm.simd import LANES

if HAVE_NUMBA:
    import numba
    from numba import prange
    from numba.core import types

    from rtgen.ssm.fused_math import (  # noqa: F401  (re-exported for fused, fused_conv and the tests)
        _exp,
        _jit,
        _one_minus_exp_neg,
        _softplus,
        _vexp2,
    )
    from rtgen.ssm.fused_recurrences import _adjoint_chunk, _forward_steps, _recompute_chunk

CHECKPOINT = 32  # steps between stored states (backward recomputes one chunk at a time)
TILE = 128  # steps loaded at once into (time, channel) tiles; a multiple of CHECKPOINT


if HAVE_NUMBA:
    _u64 = numba.uint64
    _f32_3 = types.Array(types.float32, 3, "C")  # (b, L, d) per-channel tensors, (b, L, n) for B and C
    _f32_1 = types.Array(types.float32, 1, "A")
    _f32_2c = types.Array(types.float32, 2, "C")
    _f32_4 = types.Array(types.float32, 4, "C")
    _f64_2, _f64_3 = types.Array(types.float64, 2, "C"), types.Array(types.float64, 3, "C")
    _bool, _i64 = types.boolean, types.int64
    _lay = types.Array(types.int64, 2, "C")
    # u, delta, bias, A, B, C, D, z, has_z, softplus, W, K, T, out, last, ckpt, lay, kept, dtw
    _fwd_sig = types.void(_f32_3, _f32_3, _f32_1, _f32_2c, _f32_3, _f32_3, _f32_1, _f32_3, _bool, _bool, _i64, _i64,
                          _i64, _f32_3, _f32_3, _f32_4, _lay, _f32_4, _f32_2c)
    # u, A, B, C, D, z, has_z, softplus, gout, glast, W, K, T, ckpt, kept, gu, gdelta, gz, gA, gD, gbias, gB, gC, lay,
    # delta, dtw, glow, gdtw
    _bwd_sig = types.void(_f32_3, _f32_2c, _f32_3, _f32_3, _f32_1, _f32_3, _bool, _bool, _f32_3, _f32_3, _i64, _i64,
                          _i64, _f32_4, _f32_4, _f32_3, _f32_3, _f32_3, _f64_3, _f64_2, _f64_2, _f32_4, _f32_4, _lay,
                          _f32_3, _f32_2c, _f32_4, _f64_3)

    # The helpers below are compiled as functions of their own (not inlined into the parallel kernels):
    # LLVM vectorises their short loops over channels, which it did not do inside the kernels' bodies
    # (measured: the backward went from 71 to 37 ms at L = 16k, d = 128). Arrays shared by the threads
    # (the kernels' arguments) are indexed element by element, never sliced: every view of an array
    # touches its reference count, an atomic that two cores would then fight over.

    @numba.njit(**_jit)
    def _copy_rows(src, sb, ss, dst, db, ds, rows, width):
        """dst.flat[db + r ds + i] = src.flat[sb + r ss + i] for r < rows, i < width: every copy between
        the kernels' arguments and a unit's buffers. Flat unsigned indices: numba adds a negative-index
        check to every signed index, which kept these copies scalar (5.7x slower at L = 16k, d = 256)."""
        s = src.reshape(src.size)
        o = dst.reshape(dst.size)
        for r in range(_u64(rows)):
            si = _u64(sb) + r * _u64(ss)
            oi = _u64(db) + r * _u64(ds)
            for i in range(_u64(width)):
                o[oi + i] = s[si + i]

    @numba.njit(**_jit)
    def _load_tile(src, cm, off, bi, c0, cw, t0, tl, dst):
        """dst[tt, i] = the (t0 + tt, off + c0 + i) element of batch bi of src: time-major rows of
        src.shape[2] >= d values (a slice of a wider projection starts at channel off), or, if cm, a
        channel-major (b, d, L) array."""
        W = dst.shape[1]
        if cm:  # read along time, write down the tile's columns
            s = src.reshape(src.size)
            o = dst.reshape(dst.size)
            d, L = src.shape[1], src.shape[2]
            for i in range(cw):
                sb = _u64((bi * d + c0 + i) * L + t0)
                for tt in range(_u64(tl)):
                    o[tt * _u64(W) + _u64(i)] = s[sb + tt]
        else:
            L, S = src.shape[1], src.shape[2]
            _copy_rows(src, (bi * L + t0) * S + off + c0, S, dst, 0, W, tl, cw)

    @numba.njit(**_jit)
    def _store_tile(src, dst, bi, c0, cw, t0, tl):
        """src[tt, i] into a channel-major (b, d, L) dst: the gradient of a channel-major input (time-major
        ones are written in place, `_dest_rows`)."""
        W = src.shape[1]
        s = src.reshape(src.size)
        o = dst.reshape(dst.size)
        d, L = dst.shape[1], dst.shape[2]
        for i in range(cw):
            ob = _u64((bi * d + c0 + i) * L + t0)
            for tt in range(_u64(tl)):
                o[ob + tt] = s[tt * _u64(W) + _u64(i)]

    @numba.njit(**_jit)
    def _load_states(src, bi, t0, tl, dst):
        """dst[tt, n] = src[bi, t0 + tt, n] for B or C stored as (b, L, n), C-contiguous (dst may have
        more columns: the padding states, left as they are)."""
        L, N = src.shape[1], src.shape[2]
        _copy_rows(src, (bi * L + t0) * N, N, dst, 0, dst.shape[1], tl, N)

    @numba.njit(**_jit)
    def _steps_tile(dt, bias, tl, softplus):
        """dt = softplus(delta + bias) (or delta + bias), in place over the first tl rows."""
        W = dt.shape[1]
        for tt in range(tl):
            dr = dt[tt]
            if softplus:
                for i in range(W):
                    dr[i] = _softplus(dr[i] + bias[i])
            else:
                for i in range(W):
                    dr[i] = dr[i] + bias[i]

    @numba.njit(**_jit)
    def _project_tile(lt, w, tl, dt):
        """dt[tt] = sum_r lt[tt, r] w[r] (the dt projection folded in: lt the low-rank steps (T, R), w
        the unit's (R, W) slice of its weight)."""
        R, W = w.shape
        for tt in range(tl):
            dr = dt[tt]
            for i in range(W):
                dr[i] = _ZERO
            for r in range(R):
                lv = lt[tt, r]
                wr = w[r]
                for i in range(W):
                    dr[i] += lv * wr[i]

    @numba.njit(**_jit)
    def _lowrank_grads(gdt, lt, w, tl, glt, gw):
        """Through the folded dt projection: glt[tt, r] = sum_i gdt[tt, i] w[r, i] (this unit's part of
        the low-rank steps' gradient), gw[r] += sum_tt lt[tt, r] gdt[tt] (float32, one tile)."""
        R, W = w.shape
        for tt in range(tl):
            gr = gdt[tt]
            for r in range(R):
                wr = w[r]
                acc = _ZERO
                for i in range(W):
                    acc += gr[i] * wr[i]
                glt[tt, r] = acc
                lv = lt[tt, r]
                gwr = gw[r]
                for i in range(W):
                    gwr[i] += lv * gr[i]

    @numba.njit(**_jit)
    def _unit_rows(w, c0, cw, W, R):
        """A work unit's (R, W) slice of a (r, d) weight, zero past the last channel and past row r."""
        out = np.zeros((R, W), np.float32)
        for r in range(w.shape[0]):
            for i in range(cw):
                out[r, i] = w[r, c0 + i]
        return out

    @numba.njit(**_jit)
    def _output_rows(yt, us, ub, uS, zs, zb, zS, dt, D, tl, has_z, keep, out, kept, bi, c0, cw, t0):
        """y = (C.h + D u) * silu(z) for the first tl rows of the tiles, written straight into out's
        time-major rows; for the backward also the steps dt and the ungated C.h + D u, which the
        gradient of z needs, into kept[0] and kept[1] (keeping sigmoid(z) as well measured no faster:
        memory, not arithmetic, bounds this). One pass instead of result tiles and three copies. u and z
        are read as rows of flat arrays (`_source_rows`)."""
        L, d = out.shape[1], out.shape[2]
        o = out.reshape(out.size)
        k = kept.reshape(kept.size)
        second = _u64(kept.shape[1] * L * d)  # where kept[1] starts
        for tt in range(tl):
            base = _u64((bi * L + t0 + tt) * d + c0)
            ur, zr = _u64(ub + tt * uS), _u64(zb + tt * zS)
            yr, dr = yt[tt], dt[tt]
            if has_z and keep:
                for i in range(_u64(cw)):
                    zz = zs[zr + i]
                    yp = yr[i] + D[i] * us[ur + i]
                    o[base + i] = yp * (zz / (_ONE + _exp(-zz)))
                    k[base + i] = dr[i]
                    k[second + base + i] = yp
            elif has_z:
                for i in range(_u64(cw)):
                    zz = zs[zr + i]
                    o[base + i] = (yr[i] + D[i] * us[ur + i]) * (zz / (_ONE + _exp(-zz)))
            else:
                for i in range(_u64(cw)):
                    o[base + i] = yr[i] + D[i] * us[ur + i]
                if keep:
                    for i in range(_u64(cw)):
                        k[base + i] = dr[i]

    @numba.njit(**_jit)
    def _source_rows(src, cm, off, bi, c0, cw, t0, tl, tile):
        """Where the backward reads rows t0 .. t0 + tl - 1 of a unit's channels: (flat array, index of
        the first row's first channel, row stride). Time-major sources are read in place (a tile
        copy would only be read once more); channel-major ones are first copied into `tile`."""
        if cm:
            _load_tile(src, True, off, bi, c0, cw, t0, tl, tile)
            return tile.reshape(tile.size), 0, tile.shape[1]
        S = src.shape[2]
        return src.reshape(src.size), (bi * src.shape[1] + t0) * S + off + c0, S

    @numba.njit(**_jit)
    def _dest_rows(dst, via_tile, bi, c0, t0, tile):
        """Where the backward writes a gradient's rows: in place in a time-major (b, L, d) gradient, or,
        if via_tile (a channel-major gradient, or one the kernel uses further), into `tile`."""
        if via_tile:
            return tile.reshape(tile.size), 0, tile.shape[1]
        d = dst.shape[2]
        return dst.reshape(dst.size), (bi * dst.shape[1] + t0) * d + c0, d

    @numba.njit(**_jit)
    def _product_rows(dt, us, ub, uS, tl, cw, dut):
        """dut = dt u over the first tl rows (u as rows of a flat array)."""
        for tt in range(tl):
            b = _u64(ub + tt * uS)
            for i in range(_u64(cw)):
                dut[tt, i] = dt[tt, i] * us[b + i]

    @numba.njit(**_jit)
    def _gate_grads(gs, gb, gS, zs, zb, zS, kept, tl, has_z, gyt, gzs, gzb, gzS, bi, c0, cw, t0):
        """The gradients of C.h + D u (gy, through the gate, into the tile gyt) and of z (into rows of gzs),
        from the incoming gradient (rows of gs) and the forward's ungated output, read in place from
        kept[1] (time-major (b, L, d) rows)."""
        if not has_z:
            for tt in range(tl):
                b = _u64(gb + tt * gS)
                for i in range(_u64(cw)):
                    gyt[tt, i] = gs[b + i]
            return
        L, d = kept.shape[2], kept.shape[3]
        k = kept.reshape(kept.size)
        second = _u64(kept.shape[1] * L * d)
        for tt in range(tl):
            gr, zr, gzr = _u64(gb + tt * gS), _u64(zb + tt * zS), _u64(gzb + tt * gzS)
            yr = second + _u64((bi * L + t0 + tt) * d + c0)
            gyr = gyt[tt]
            for i in range(_u64(cw)):
                zz = zs[zr + i]
                sg = _ONE / (_ONE + _exp(-zz))
                go = gs[gr + i]
                gzs[gzr + i] = go * k[yr + i] * sg * (_ONE + zz * (_ONE - sg))
                gyr[i] = go * zz * sg

    @numba.njit(**_jit)
    def _input_grads(gyt, gdut, gdvt, us, ub, uS, dt, D, tl, cw, softplus, gus, gub, guS, gdt, gds, gdb, gdS,
                     write_gd, gD, gbias):
        """From the adjoint's per-step sums: gu = gy D + gdu dt (into rows of gus); gdelta = (gdu u + gdv)
        * softplus', with softplus'(v) = 1 - e^-dt (into the tile gdt and, if write_gd, rows of gds);
        the float64 sums over time for D and the bias. u is read as rows of us."""
        for tt in range(tl):
            gyr, gdur, gdvr, dtr, gdr = gyt[tt], gdut[tt], gdvt[tt], dt[tt], gdt[tt]
            ur = _u64(ub + tt * uS)
            gur = _u64(gub + tt * guS)
            for i in range(_u64(cw)):
                u = us[ur + i]
                gus[gur + i] = gyr[i] * D[i] + gdur[i] * dtr[i]
                gdr[i] = gdur[i] * u + gdvr[i] * _LN2  # gdv was summed against A log2(e)
                gD[i] += gyr[i] * u
            if softplus:
                for i in range(_u64(cw)):
                    gdr[i] = gdr[i] * _one_minus_exp_neg(dtr[i])
            for i in range(_u64(cw)):
                gbias[i] += gdr[i]
            if write_gd:
                gdo = _u64(gdb + tt * gdS)
                for i in range(_u64(cw)):
                    gds[gdo + i] = gdr[i]

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
        """h[:n] = src[bi, k, :, c0:c0 + W] (checkpoints of shape (b, L / K, n, dp))."""
        N, W = src.shape[2], h.shape[1]
        _copy_rows(src, (bi * src.shape[1] + k) * N * src.shape[3] + c0, src.shape[3], h, 0, W, N, W)

    @numba.njit(**_jit)
    def _put_state(h, dst, bi, k, c0):
        """dst[bi, k, :, c0:c0 + W] = h[:n]."""
        N, W = dst.shape[2], h.shape[1]
        _copy_rows(h, 0, W, dst, (bi * dst.shape[1] + k) * N * dst.shape[3] + c0, dst.shape[3], N, W)

    @numba.njit(**_jit)
    def _put_rows(src, dst, bi, g, t0, tl):
        """dst[bi, g, t0 + tt, :] = src[tt, :n] (per-step sums over the group's channels)."""
        N = dst.shape[3]
        _copy_rows(src, 0, src.shape[1], dst, ((bi * dst.shape[1] + g) * dst.shape[2] + t0) * N, N, tl, N)

    @numba.njit(**_jit)
    def _unit_vector(v, c0, cw, W):
        """A work unit's W values of a per-channel vector, zero past the last channel."""
        out = np.zeros(W, np.float32)
        for i in range(cw):
            out[i] = v[c0 + i]
        return out

    @numba.njit(_fwd_sig, parallel=True, **_jit)
    def scan_fwd(u, delta, bias, A, Bm, Cm, D, z, has_z, softplus, W, K, T, out, last, ckpt, lay, kept, dtw):
        """out: (b, L, d); u, delta, z: time-major rows or channel-major (b, d, L) arrays, as
        lay[0..2] = (channel-major, channel offset) say (see `_load_tile`);
        bias, D: (d,); A: (n, d), times log2(e); Bm, Cm: (b, L, n); all C-contiguous; last: (b, n, dp).
        For the backward (else empty): ckpt (b, L / K, n, dp), dp = d rounded up to W; kept (1 or 2, b, L, d):
        the steps dt and (gated) the ungated output C.h + D u. With a dt projection dtw (R, d) (else (0, d)),
        delta holds the R low-rank steps and delta = dtw^T low is formed per tile.
        One work unit is one (batch, group of W channels); it walks L in tiles of T steps (a multiple
        of K), each loaded once into (T, W) tiles, so the hot loop reads nothing else."""
        b, L, d = out.shape
        N = A.shape[0]
        NP = -(-N // 4) * 4  # states padded to the recurrences' blocks of four
        G = -(-d // W)
        keep = ckpt.shape[0] > 0
        step = K if keep else T  # chunks between checkpoints
        for unit in prange(b * G):
            bi = unit // G
            c0 = (unit % G) * W
            cw = min(W, d - c0)
            h = np.zeros((NP, W), np.float32)
            Aw, Dw, bw = _unit_rows(A, c0, cw, W, NP), _unit_vector(D, c0, cw, W), _unit_vector(bias, c0, cw, W)
            R = dtw.shape[0]
            wdt = _unit_rows(dtw, c0, cw, W, R)
            lt = np.zeros((T, R), np.float32)
            ut = np.zeros((T, W), np.float32)
            dt = np.zeros((T, W), np.float32)
            dut = np.zeros((T, W), np.float32)
            zt = np.zeros((T, W), np.float32)
            yt = np.zeros((T, W), np.float32)
            Bt = np.zeros((T, NP), np.float32)
            Ct = np.zeros((T, NP), np.float32)
            for t0 in range(0, L, T):
                tl = min(T, L - t0)
                us, ub, uS = _source_rows(u, lay[0, 0] != 0, lay[0, 1], bi, c0, cw, t0, tl, ut)
                if R > 0:
                    _load_tile(delta, lay[1, 0] != 0, lay[1, 1], bi, 0, R, t0, tl, lt)
                    _project_tile(lt, wdt, tl, dt)
                else:
                    _load_tile(delta, lay[1, 0] != 0, lay[1, 1], bi, c0, cw, t0, tl, dt)
                _steps_tile(dt, bw, tl, softplus)
                _product_rows(dt, us, ub, uS, tl, cw, dut)
                zs, zb, zS = _source_rows(z, has_z and lay[2, 0] != 0, lay[2, 1], bi, c0, cw, t0, tl, zt)
                _load_states(Bm, bi, t0, tl, Bt)
                _load_states(Cm, bi, t0, tl, Ct)
                for s0 in range(0, tl, step):
                    if keep:
                        _put_state(h, ckpt, bi, (t0 + s0) // K, c0)
                    _forward_steps(dt, dut, Bt, Ct, Aw, h, yt, s0, min(step, tl - s0))
                _output_rows(yt, us, ub, uS, zs, zb, zS, dt, Dw, tl, has_z, keep, out, kept, bi, c0, cw, t0)
            for n in range(N):
                for i in range(W):
                    last[bi, n, c0 + i] = h[n, i]

    @numba.njit(_bwd_sig, parallel=True, **_jit)
    def scan_bwd(u, A, Bm, Cm, D, z, has_z, softplus, gout, glast, W, K, T, ckpt, kept,
                 gu, gdelta, gz, gA, gD, gbias, gB, gC, lay, delta, dtw, glow, gdtw):
        """Gradients of `scan_fwd`, from its checkpoints and kept tensors; gout laid out as lay[3] says.
        gu, gdelta, gz: (b, L, d), or (b, d, L) where u, delta, z are channel-major (gdelta: of delta itself,
        through the softplus); gA: (b, n, dp), gD, gbias: (b, dp), float64 sums over time; gB, gC:
        (b, G, L, n) partial sums per channel group; glast: (b, n, dp). With a dt projection dtw (R, d),
        the gradients go to the low-rank steps in delta instead (glow: (b, G, L, R) partial sums) and to
        the projection (gdtw: (b, R, dp) float64), and gdelta is not written.
        Per tile of T steps (loaded as in the forward), per chunk of K steps from the last: recompute
        the states and decays from the chunk's checkpoint, then run the adjoint back through it."""
        b, L = gB.shape[0], gB.shape[2]
        d = A.shape[1]
        N = A.shape[0]
        NP = -(-N // 4) * 4  # states padded to the recurrences' blocks of four
        G = -(-d // W)
        for unit in prange(b * G):
            bi = unit // G
            g = unit % G
            c0 = g * W
            cw = min(W, d - c0)
            Aw, Dw = _unit_rows(A, c0, cw, W, NP), _unit_vector(D, c0, cw, W)  # no bias: dt was kept
            lam = _unit_rows(glast[bi], c0, cw, W, NP)  # a_{t+1} * adjoint_{t+1}, carried backwards
            R = dtw.shape[0]
            wdt = _unit_rows(dtw, c0, cw, W, R)
            lt = np.zeros((T, R), np.float32)
            glt = np.zeros((T, R), np.float32)
            gw32 = np.zeros((R, W), np.float32)
            gw64 = np.zeros((R, W), np.float64)
            ut = np.zeros((T, W), np.float32)
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
            Bt = np.zeros((T, NP), np.float32)
            Ct = np.zeros((T, NP), np.float32)
            gBt = np.empty((T, NP), np.float32)
            gCt = np.empty((T, NP), np.float32)
            h = np.zeros((NP, W), np.float32)  # a chunk's first state
            hs = np.empty((K + 1) * NP * W, np.float32)  # the chunk's states and decays (`_recompute_chunk`)
            aseq = np.empty(K * NP * W, np.float32)
            pB = np.empty(K * NP * LANES, np.float32)  # per step and state, the sums over channel vectors
            pC = np.empty(K * NP * LANES, np.float32)
            gA32 = np.zeros((NP, W), np.float32)
            gA64 = np.zeros((NP, W), np.float64)
            gD64 = np.zeros(W, np.float64)
            gb64 = np.zeros(W, np.float64)
            for t0 in range(-(-L // T) * T - T, -1, -T):
                tl = min(T, L - t0)
                us, ub, uS = _source_rows(u, lay[0, 0] != 0, lay[0, 1], bi, c0, cw, t0, tl, ut)
                _load_tile(kept[0], False, 0, bi, c0, cw, t0, tl, dt)
                _product_rows(dt, us, ub, uS, tl, cw, dut)
                zs, zb, zS = _source_rows(z, has_z and lay[2, 0] != 0, lay[2, 1], bi, c0, cw, t0, tl, zt)
                gzs, gzb, gzS = _dest_rows(gz, has_z and lay[2, 0] != 0, bi, c0, t0, gzt)
                _load_states(Bm, bi, t0, tl, Bt)
                _load_states(Cm, bi, t0, tl, Ct)
                gs, gb, gS = _source_rows(gout, lay[3, 0] != 0, lay[3, 1], bi, c0, cw, t0, tl, got)
                _gate_grads(gs, gb, gS, zs, zb, zS, kept, tl, has_z, gyt, gzs, gzb, gzS, bi, c0, cw, t0)
                for s0 in range((tl - 1) // K * K, -1, -K):  # the tile's checkpoint chunks, last first
                    sl = min(K, tl - s0)
                    _get_state(ckpt, bi, (t0 + s0) // K, c0, h)
                    _recompute_chunk(dt, dut, Bt, Aw, h, s0, sl, hs, aseq)
                    _adjoint_chunk(gyt, dut, dt, Bt, Ct, Aw, s0, sl, hs, aseq, lam, gA32, gdut, gdvt, pB, pC, gBt, gCt)
                    _fold(gA64, gA32)  # the chunk's float32 sums into float64
                _put_rows(gBt, gB, bi, g, t0, tl)
                _put_rows(gCt, gC, bi, g, t0, tl)
                gus, gub, guS = _dest_rows(gu, lay[0, 0] != 0, bi, c0, t0, gut)
                direct_gd = R == 0 and lay[1, 0] == 0  # else the tile gdt serves (stored, or the dt projection)
                gds, gdb, gdS = _dest_rows(gdelta, not direct_gd, bi, c0, t0, gdt)
                _input_grads(gyt, gdut, gdvt, us, ub, uS, dt, Dw, tl, cw, softplus, gus, gub, guS, gdt, gds, gdb, gdS,
                             direct_gd, gD64, gb64)
                if lay[0, 0] != 0:
                    _store_tile(gut, gu, bi, c0, cw, t0, tl)
                if R > 0:
                    _load_tile(delta, lay[1, 0] != 0, lay[1, 1], bi, 0, R, t0, tl, lt)
                    _lowrank_grads(gdt, lt, wdt, tl, glt, gw32)
                    _fold(gw64, gw32)
                    _put_rows(glt, glow, bi, g, t0, tl)
                elif not direct_gd:
                    _store_tile(gdt, gdelta, bi, c0, cw, t0, tl)
                if has_z and lay[2, 0] != 0:
                    _store_tile(gzt, gz, bi, c0, cw, t0, tl)
            for n in range(N):
                for i in range(W):
                    gA[bi, n, c0 + i] = gA64[n, i]
            for i in range(W):
                gD[bi, c0 + i] = gD64[i]
                gbias[bi, c0 + i] = gb64[i]
            for r in range(R):
                for i in range(W):
                    gdtw[bi, r, c0 + i] = gw64[r, i]
