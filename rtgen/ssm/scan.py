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
    T = chunk or _chunk_len(L)
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


def _grouped(M: torch.Tensor) -> torch.Tensor:
    """(b, n, L) or (b, g, n, L) -> (b, L, g, n)."""
    return M.transpose(1, 2).unsqueeze(2) if M.dim() == 3 else M.permute(0, 3, 1, 2)


def _ungrouped_grad(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b, L, g, n) gradient back to the layout of `like`."""
    return grad[:, :, 0].transpose(1, 2) if like.dim() == 3 else grad.permute(0, 2, 3, 1)


class _SelectiveScan(torch.autograd.Function):
    """Core y_t = C_t . h_t; (u, delta, A, B, C, h0) -> (y, h_end). Tensors are split into
    groups g of k = d / g channels so grouped B and C are never expanded."""

    @staticmethod
    def _setup(u, delta, A, B, C):
        b, d, L = u.shape
        Bg, Cg = _grouped(B), _grouped(C)  # (b, L, g, n)
        g, n = Bg.shape[2], Bg.shape[3]
        if d % g:
            raise ValueError(f"{d} channels cannot be split into {g} groups")
        k = d // g
        # time-major and contiguous, so the (b, L, g, k, n) tensors below are too (fast slices per step)
        ut = u.transpose(1, 2).contiguous().reshape(b, L, g, k)
        dt = delta.transpose(1, 2).contiguous().reshape(b, L, g, k)
        Bg, Cg = Bg.contiguous(), Cg.contiguous()
        Ag = A.reshape(g, k, n)
        dA = torch.exp(dt.unsqueeze(-1) * Ag)  # (b, L, g, k, n)
        dtu = dt * ut
        dBu = dtu.unsqueeze(-1) * Bg.unsqueeze(3)
        return ut, dt, Ag, Bg, Cg, dA, dtu, dBu

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0):
        b, d, L = u.shape
        _, _, Ag, Bg, Cg, dA, _, dBu = _SelectiveScan._setup(u, delta, A, B, C)
        h0g = h0.reshape(b, *Ag.shape) if h0 is not None else None
        h, last = linear_scan(dA, dBu, h0g, out=dBu)
        y = (h * Cg.unsqueeze(3)).sum(-1).reshape(b, L, d)
        ctx.save_for_backward(u, delta, A, B, C, h0 if h0 is not None else torch.empty(0))
        ctx.has_h0 = h0 is not None
        return y.transpose(1, 2), last.reshape(b, d, -1)

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, h0 = ctx.saved_tensors
        b, d, L = u.shape
        ut, dt, Ag, Bg, Cg, dA, dtu, dBu = _SelectiveScan._setup(u, delta, A, B, C)
        g_, k = Ag.shape[0], Ag.shape[1]
        h0g = h0.reshape(b, *Ag.shape) if ctx.has_h0 else None
        h, _ = linear_scan(dA, dBu, h0g)  # recomputed, not stored
        gyt = gy.transpose(1, 2).contiguous().reshape(b, L, g_, k)
        gC = (h * gyt.unsqueeze(-1)).sum(3)
        # adjoint g_t = C_t gy_t + a_{t+1} g_{t+1}: the same recurrence in reverse
        gh = gyt.unsqueeze(-1) * Cg.unsqueeze(3)
        if glast is not None:
            gh[:, -1] += glast.reshape(b, g_, k, -1)
        a_next = torch.cat([dA[:, 1:], dA.new_zeros(dA[:, :1].shape)], 1)
        dA_first = dA[:, 0]
        del dA
        g, _ = linear_scan(a_next, gh, reverse=True, out=gh)
        del a_next
        # a_t h_{t-1} = h_t - x_t, so d loss / d(delta_t A) = g_t (h_t - x_t): no shifted copy of h
        r = h.sub_(dBu).mul_(g)
        gA = (r * dt.unsqueeze(-1)).sum((0, 1)).reshape(A.shape)
        gdelta = (r * Ag).sum(-1)
        del r
        gB = (g * dtu.unsqueeze(-1)).sum(3)
        gdtu = (g * Bg.unsqueeze(3)).sum(-1)
        gdelta = gdelta + gdtu * ut
        gu = gdtu * dt
        gh0 = (g[:, 0] * dA_first).reshape(h0.shape) if ctx.has_h0 else None
        return (
            gu.reshape(b, L, d).transpose(1, 2),
            gdelta.reshape(b, L, d).transpose(1, 2),
            gA,
            _ungrouped_grad(gB, B),
            _ungrouped_grad(gC, C),
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
