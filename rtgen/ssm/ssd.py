"""SSD, the state-space-duality algorithm of Mamba2, with `mamba_chunk_scan_combined` semantics.

Per head the decay is a scalar, exp(dt * A), so within a chunk of T tokens the scan is a
masked T x T "attention" (quadratic only in T); across chunks the states follow a short
linear recurrence. Written after the official `ssd_minimal` reference; the cross-chunk
step uses a linear scan instead of an (nc x nc) matrix so cost stays linear in length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtgen.ssm.scan import LinearScan, up


def _prepare(x, dt, A, B, C, dt_bias, dt_softplus, per_head: bool = True):
    """float32 inputs, dt after bias and softplus; B and C repeated to every head (`per_head`) or left
    one per group of heads."""
    b, L, h, p = x.shape
    g = B.shape[2]
    if h % g:
        raise ValueError(f"{h} heads cannot be split into {g} groups")
    dt = up(dt)
    if dt_bias is not None:
        dt = dt + up(dt_bias)
    if dt_softplus:
        dt = F.softplus(dt)
    B, C = up(B), up(C)
    if per_head:
        B, C = B.repeat_interleave(h // g, dim=2), C.repeat_interleave(h // g, dim=2)
    return up(x), dt, up(A), B, C


def _finish(y, x, D, z, dtype_in):
    if D is not None:
        D = up(D)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(up(z))
    return y.to(dtype_in)


def ssd_chunked(
    x, dt, A, B, C, chunk_size: int = 64, D=None, z=None, dt_bias=None, initial_states=None,
    dt_softplus: bool = False, return_final_states: bool = False,
):
    """x: (b, L, h, p); dt: (b, L, h); A: (h,) negative; B, C: (b, L, g, n); D: (h,) or (h, p);
    z: (b, L, h, p); initial_states: (b, h, p, n). Returns y (b, L, h, p) [, final state]."""
    dtype_in = x.dtype
    with torch.autocast(x.device.type, enabled=False):
        x, dt, A, B, C = _prepare(x, dt, A, B, C, dt_bias, dt_softplus, per_head=False)
        b, L, h, p = x.shape
        g = B.shape[2]
        r = h // g  # heads per group of B and C
        T = chunk_size
        pad = -L % T
        xdt, Adt = x * dt.unsqueeze(-1), A * dt  # dt = 0 on padding: no input, no decay
        if pad:
            xdt, Adt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (xdt, Adt, B, C))
        nc = (L + pad) // T
        xdt = xdt.reshape(b, nc, T, g, r, p)
        B, C = (t.reshape(b, nc, T, g, -1) for t in (B, C))
        Adt = Adt.reshape(b, nc, T, h).permute(0, 3, 1, 2)  # (b, h, c, l)
        Acum = torch.cumsum(Adt, dim=-1)
        # 1. within chunks: masked, decayed C.B "attention". C.B once per group (it is shared by the
        # group's heads); the decay from differences of the in-chunk cumulative sums, as mamba_ssm's
        # kernels do (one subtraction, where ssd_minimal's segsum takes a (T, T) cumulative sum).
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        decay = torch.exp((Acum.unsqueeze(-1) - Acum.unsqueeze(-2)).masked_fill(~causal, -torch.inf))
        CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)
        scores = CB.unsqueeze(2) * decay.reshape(b, g, r, nc, T, T)
        y = torch.einsum("bgrcls,bcsgrp->bclgrp", scores, xdt)
        # 2. each chunk's final state from its own inputs
        decay_to_end = torch.exp(Acum[..., -1:] - Acum).reshape(b, g, r, nc, T)
        states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", B, decay_to_end, xdt).reshape(b, nc, h, p, -1)
        # 3. carry states across chunks (linear recurrence over chunks)
        chunk_decay = torch.exp(Acum[..., -1]).permute(0, 2, 1)[..., None, None]  # (b, c, h, 1, 1)
        h0 = up(initial_states) if initial_states is not None else None
        after, final = LinearScan.apply(chunk_decay, states, h0)
        first = h0.unsqueeze(1) if h0 is not None else states.new_zeros(states[:, :1].shape)
        before = torch.cat([first, after[:, :-1]], 1).reshape(b, nc, g, r, p, -1)
        # 4. contribution of the incoming state to each position
        y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, before, torch.exp(Acum).reshape(b, g, r, nc, T))
        y = y.reshape(b, nc * T, h, p)[:, :L]
        out = _finish(y, x, D, z, dtype_in)
    return (out, final) if return_final_states else out


def ssd_ref(
    x, dt, A, B, C, chunk_size: int = 64, D=None, z=None, dt_bias=None, initial_states=None,
    dt_softplus: bool = False, return_final_states: bool = False,
):
    """The sequential recurrence h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t (ground truth)."""
    dtype_in = x.dtype
    x, dt, A, B, C = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    b, L, h, p = x.shape
    state = up(initial_states) if initial_states is not None else x.new_zeros((b, h, p, B.shape[-1]))
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(2)
        ys.append((state * C[:, t].unsqueeze(2)).sum(-1))
    out = _finish(torch.stack(ys, 1), x, D, z, dtype_in)
    return (out, state) if return_final_states else out
