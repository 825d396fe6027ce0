"""Selective scan (Mamba / S6) in pure PyTorch, with `mamba_ssm.selective_scan_fn` semantics.

    h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = C_t . h_t + D * u_t,   out = y * silu(z)

Two implementations: `selective_scan_ref`, a plain loop over time (for tests), and
`selective_scan_fast`, which runs the first-order linear recurrence as a chunked scan
(a short loop within chunks, vectorised across chunks, then a short loop carrying state
across chunks). Decays are products of numbers in (0, 1], never divisions, so it is stable
at any length. Its backward is written by hand: the adjoint of a linear recurrence is the
same recurrence run in reverse, so gradients cost one more scan and memory stays linear
in the sequence length (nothing of size L x T or L^2 is ever formed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _chunk_len(L: int) -> int:
    return max(8, min(256, int(math.sqrt(L))))


def linear_scan(
    a: torch.Tensor,
    x: torch.Tensor,
    h0: torch.Tensor | None = None,
    reverse: bool = False,
    out: torch.Tensor | None = None,
    chunk: int | None = None,
):
    """First-order linear recurrence along dim 1 of a, x: (B, L, ...). Returns (h, h_end).

    Forward: h_t = a_t h_{t-1} + x_t, h_{-1} = h0. Reverse: h_t = a_t h_{t+1} + x_t, h_L = h0.
    Chunked: (1) the end state of every chunk from zero, all chunks at once; (2) a short loop
    carrying states across chunks; (3) the chunk loop again, seeded with the carried state.
    `out` may alias `x` (each x_t is read before h_t overwrites it).
    """
    Bsz, L = x.shape[:2]
    rest = x.shape[2:]
    T = chunk or min(_chunk_len(L), L)  # a short sequence (e.g. chunk carries) is one chunk, unpadded
    nc = -(-L // T)
    pad = nc * T - L
    if pad:  # identity steps at the far end
        ones, zeros = a.new_ones((Bsz, pad, *a.shape[2:])), x.new_zeros((Bsz, pad, *rest))
        a = torch.cat([ones, a] if reverse else [a, ones], 1)
        x = torch.cat([zeros, x] if reverse else [x, zeros], 1)
        out = None
    ac = a.reshape(Bsz, nc, T, *a.shape[2:])  # a may broadcast against x
    xc = x.reshape(Bsz, nc, T, *rest)
    steps = range(T - 1, -1, -1) if reverse else range(T)
    # (1) chunk end states from zero, and each chunk's total decay
    state = xc[:, :, steps[0]].clone()
    decay = ac[:, :, steps[0]].expand_as(state).clone()
    for t in steps[1:]:
        state = torch.addcmul(xc[:, :, t], ac[:, :, t], state)
        decay.mul_(ac[:, :, t])
    # (2) carry across chunks
    carry = torch.empty_like(state)
    s = h0 if h0 is not None else x.new_zeros((Bsz, *rest))
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        carry[:, c] = s
        s = torch.addcmul(state[:, c], decay[:, c], s)
    # (3) rerun each chunk from its carried state, writing every h_t
    h = out if out is not None else torch.empty_like(x)
    hc = h.reshape(Bsz, nc, T, *rest)
    prev = carry
    for t in steps:
        torch.addcmul(xc[:, :, t], ac[:, :, t], prev, out=hc[:, :, t])
        prev = hc[:, :, t]
    if pad:
        h = h[:, :L] if not reverse else h[:, pad:]
    return h, s


def _sum_to(grad: torch.Tensor, shape) -> torch.Tensor:
    """Reduce a broadcast gradient back to `shape`."""
    dims = [i for i, (gs, s) in enumerate(zip(grad.shape, shape)) if s == 1 and gs != 1]
    return grad.sum(dims, keepdim=True) if dims else grad


class LinearScan(torch.autograd.Function):
    """Differentiable `linear_scan` (forward direction); `a` may broadcast against `x`."""

    @staticmethod
    def forward(ctx, a, x, h0):
        h, last = linear_scan(a, x, h0)
        ctx.save_for_backward(a, h, h0 if h0 is not None else torch.empty(0))
        ctx.has_h0 = h0 is not None
        return h, last

    @staticmethod
    def backward(ctx, gh, glast):
        a, h, h0 = ctx.saved_tensors
        gh = gh.clone() if gh is not None else torch.zeros_like(h)
        if glast is not None:
            gh[:, -1] += glast
        a_next = torch.cat([a[:, 1:], a.new_zeros(a[:, :1].shape)], 1)
        g, _ = linear_scan(a_next, gh, reverse=True, out=gh)
        first = h0.unsqueeze(1) if ctx.has_h0 else h.new_zeros(h[:, :1].shape)
        ga = _sum_to(g * torch.cat([first, h[:, :-1]], 1), a.shape)
        gh0 = _sum_to(g[:, 0] * a[:, 0], h0.shape) if ctx.has_h0 else None
        return ga, g, gh0


def _steps(t: torch.Tensor, T: int) -> torch.Tensor:
    """(b, L, ...) -> (T, b, nc, ...) contiguous, zero-padded to nc * T: slice [t] is step t of every chunk."""
    b, L = t.shape[:2]
    nc = -(-L // T)
    if nc * T != L:
        t = torch.cat([t, t.new_zeros((b, nc * T - L, *t.shape[2:]))], 1)
    return t.reshape(b, nc, T, *t.shape[2:]).movedim(2, 0).contiguous()


def _unsteps(t: torch.Tensor, L: int) -> torch.Tensor:
    """Inverse of _steps: (T, b, nc, ...) -> (b, L, ...)."""
    T, b, nc = t.shape[:3]
    return t.movedim(0, 2).reshape(b, nc * T, *t.shape[3:])[:, :L]


def _grouped(M: torch.Tensor) -> torch.Tensor:
    """(b, n, L) or (b, g, n, L) -> (b, L, g, n)."""
    return M.transpose(1, 2).unsqueeze(2) if M.dim() == 3 else M.permute(0, 3, 1, 2)


def _ungrouped_grad(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b, L, g, n) gradient back to the layout of `like`."""
    return grad[:, :, 0].transpose(1, 2) if like.dim() == 3 else grad.permute(0, 2, 3, 1)


def _scan_chunk(L: int, state_elems: int) -> int:
    """Steps per chunk: enough chunks that each step's tensors stay cache-sized, few enough steps."""
    T = int(2 ** round(math.log2(max(1.0, L * state_elems / 2**17))))
    return max(16, min(T, 512, 1 << max(4, (L - 1).bit_length())))


class _SelectiveScan(torch.autograd.Function):
    """Core y_t = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t; -> (y, h_end).

    Channels are split into g groups of k (grouped B and C are never expanded). The sequence is
    cut into nc chunks of T steps and every loop runs over steps, all chunks at once, on
    (b, nc, g, k, n) tensors that fit in cache: exp(dt A) and dt u B are formed per step, never
    for the whole sequence. Forward: (1) each chunk's end state from zero, (2) states carried
    across chunks, (3) the exact states, with y_t reduced on the fly. Backward runs the adjoint
    recurrence the same way in reverse, with every gradient formed per step.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):
        b, d, L = u.shape
        Bg, Cg = _grouped(B), _grouped(C)
        g, n = Bg.shape[2], Bg.shape[3]
        if d % g:
            raise ValueError(f"{d} channels cannot be split into {g} groups")
        k = d // g
        T = _scan_chunk(L, b * d * n)
        us = _steps(u.transpose(1, 2).reshape(b, L, g, k), T)  # (T, b, nc, g, k)
        dts = _steps(delta.transpose(1, 2).reshape(b, L, g, k), T)  # padding: dt = 0 -> identity steps
        Bs, Cs = _steps(Bg, T).unsqueeze(-2), _steps(Cg, T).unsqueeze(-2)  # (T, b, nc, g, 1, n)
        Ag = A.reshape(g, k, n)
        dtus = dts * us
        nc = us.shape[2]
        # (1) end state of each chunk from zero
        s = u.new_zeros((b, nc, g, k, n))
        for t in range(T):
            s = torch.addcmul(dtus[t].unsqueeze(-1) * Bs[t], torch.exp(dts[t].unsqueeze(-1) * Ag), s)
        # (2) carry across chunks; each chunk's total decay is exp(A * sum dt)
        P = torch.exp(dts.sum(0).unsqueeze(-1) * Ag)
        carry = torch.empty_like(s)
        state = h0.reshape(b, g, k, n) if h0 is not None else u.new_zeros((b, g, k, n))
        for c in range(nc):
            carry[:, c] = state
            state = torch.addcmul(s[:, c], P[:, c], state)
        # (3) exact states from the carried ones; y reduced per step
        keep = any(ctx.needs_input_grad)
        hs = u.new_empty((T, b, nc, g, k, n)) if keep else None
        ys = u.new_empty((T, b, nc, g, k))
        h = carry
        for t in range(T):
            h = torch.addcmul(dtus[t].unsqueeze(-1) * Bs[t], torch.exp(dts[t].unsqueeze(-1) * Ag), h)
            if keep:
                hs[t] = h
            torch.sum(h * Cs[t], -1, out=ys[t])
        if keep:
            ctx.save_for_backward(us, dts, Ag, Bs, Cs, hs, P)
            ctx.meta = (b, d, L, g, k, n, B.dim(), C.dim(), h0 is not None)
        y = _unsteps(ys, L).reshape(b, L, d).transpose(1, 2)
        return y, state.reshape(b, d, n)

    @staticmethod
    def backward(ctx, gy, glast):
        us, dts, Ag, Bs, Cs, hs, P = ctx.saved_tensors
        b, d, L, g, k, n, Bdim, Cdim, has_h0 = ctx.meta
        T, nc = us.shape[0], us.shape[2]
        gys = _steps(gy.transpose(1, 2).reshape(b, L, g, k), T)
        dtus = dts * us
        # (1) adjoint at each chunk's first step from a zero incoming adjoint
        G = gys[T - 1].unsqueeze(-1) * Cs[T - 1]
        a_next = torch.exp(dts[T - 1].unsqueeze(-1) * Ag)
        for t in range(T - 2, -1, -1):
            G = torch.addcmul(gys[t].unsqueeze(-1) * Cs[t], a_next, G)
            a_next = torch.exp(dts[t].unsqueeze(-1) * Ag)
        a0G = a_next * G  # a_next is now a_0 of every chunk
        # (2) carry adjoints backwards across chunks: I_{c-1} = a_0(c) G_c + P_c I_c
        carry = torch.empty_like(G)
        I = glast.reshape(b, g, k, n).clone() if glast is not None else us.new_zeros((b, g, k, n))
        for c in range(nc - 1, -1, -1):
            carry[:, c] = I
            I = torch.addcmul(a0G[:, c], P[:, c], I)
        # (3) exact adjoint per step and every gradient from it
        gus, gdts = torch.empty_like(us), torch.empty_like(dts)
        gBs = us.new_empty((T, b, nc, g, n))
        gCs = torch.empty_like(gBs)
        gA = torch.zeros_like(G)
        grad = carry
        for t in range(T - 1, -1, -1):
            a = torch.exp(dts[t].unsqueeze(-1) * Ag)
            gh = gys[t].unsqueeze(-1) * Cs[t]
            grad = gh + grad if t == T - 1 else torch.addcmul(gh, a_next, grad)
            a_next = a
            h = hs[t]
            x = dtus[t].unsqueeze(-1) * Bs[t]
            r = grad * (h - x)  # d loss / d (dt_t A): a_t h_{t-1} = h_t - x_t
            gA.addcmul_(r, dts[t].unsqueeze(-1))
            gdtu = (grad * Bs[t]).sum(-1)  # d loss / d (dt_t u_t)
            gdts[t] = (r * Ag).sum(-1) + gdtu * us[t]
            gus[t] = gdtu * dts[t]
            gBs[t] = (grad * dtus[t].unsqueeze(-1)).sum(-2)
            gCs[t] = (h * gys[t].unsqueeze(-1)).sum(-2)
        gh0 = I.reshape(b, d, n) if has_h0 else None
        like_B, like_C = torch.empty((0,) * Bdim), torch.empty((0,) * Cdim)
        return (
            _unsteps(gus, L).reshape(b, L, d).transpose(1, 2),
            _unsteps(gdts, L).reshape(b, L, d).transpose(1, 2),
            gA.sum((0, 1)).reshape(d, n),
            _ungrouped_grad(_unsteps(gBs, L), like_B),
            _ungrouped_grad(_unsteps(gCs, L), like_C),
            gh0,
        )


def up(x: torch.Tensor | None) -> torch.Tensor | None:
    """Half precision computes in float32; float32 and float64 stay as they are."""
    return x.float() if x is not None and x.dtype in (torch.float16, torch.bfloat16) else x


def _prepare(u, delta, A, D, z, delta_bias, delta_softplus):
    delta = up(delta)
    if delta_bias is not None:
        delta = delta + up(delta_bias)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return up(u), delta, up(A)


def _finish(y, u, D, z, dtype_in):
    if D is not None:
        y = y + u * up(D)[..., None]
    if z is not None:
        y = y * F.silu(up(z))
    return y.to(dtype_in)


def selective_scan_fast(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, h0=None
):
    """u, delta, z: (b, d, L); A: (d, n) real; B, C: (b, n, L) or grouped (b, g, n, L); D, delta_bias: (d,)."""
    dtype_in = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u, delta, A = _prepare(u, delta, A, D, z, delta_bias, delta_softplus)
        y, last = _SelectiveScan.apply(u, delta, A, up(B), up(C), up(h0))
        out = _finish(y, u, D, z, dtype_in)
    return (out, last) if return_last_state else out


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, h0=None
):
    """The plain sequential recurrence, one time step at a time (slow; the ground truth)."""
    dtype_in = u.dtype
    u, delta, A = _prepare(u, delta, A, D, z, delta_bias, delta_softplus)
    d = u.shape[1]
    Bg, Cg = _grouped(up(B)), _grouped(up(C))  # (b, L, g, n)
    reps = d // Bg.shape[2]
    h = u.new_zeros((u.shape[0], d, A.shape[1])) if h0 is None else up(h0)
    ys = []
    for t in range(u.shape[2]):
        Bt, Ct = Bg[:, t].repeat_interleave(reps, dim=1), Cg[:, t].repeat_interleave(reps, dim=1)
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bt
        ys.append((h * Ct).sum(-1))
    out = _finish(torch.stack(ys, dim=2), u, D, z, dtype_in)
    return (out, h) if return_last_state else out
