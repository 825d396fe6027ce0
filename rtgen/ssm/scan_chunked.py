"""Mamba1 (S6) selective scan in chunked, matmul form: the SSD algorithm of Mamba2 carried over
to per-(channel, state) decays, so that the work within a chunk runs on the matmul units (bf16
ones with `matmul_dtype=torch.bfloat16`). A measured alternative to `selective_scan_fast`; same
semantics as `selective_scan_ref`; gradients from autograd (pure PyTorch ops).

Algorithm. dt = softplus(delta + bias) (or delta + bias). The sequence is cut into chunks of Q
steps (padded with dt = 0: no input, no decay). Per chunk, channel d and state n, with
S_t = A[d, n] * c_t and c_t = cumsum of dt over the chunk up to step t (inclusive):

    h_t = exp(S_t) h_in + sum_{s<=t} exp(S_t - S_s) B_s[n] dt_s u_s,   y_t = sum_n C_t[n] h_t[n]

Unlike SSD the (t, s) decay differs per (d, n), so it is not one kernel shared by channels; it is
factored instead around a per-(chunk, channel) reference m, exp(S_t - S_s) =
exp(A (c_t - m)) exp(-A (c_s - m)), which makes the intra-chunk part, per channel, a masked
(Q x n) @ (n x Q) product:

    M = tril((C * E) @ (B / E)^T, -1),  E = exp(A (c - m)),   y_intra = M @ (dt u) + (C . B) dt u

The diagonal (s = t, no decay) is taken apart, in float32 and without exps: its terms are the
largest, and through E and 1/E their derivatives in dt cancel exactly in arithmetic but not once
the operands are rounded to bf16 (splitting it halves the bf16 error of the dt and A gradients).

Each chunk's end state from its own inputs is again a product over the chunk's time axis,
exp(A (c_end - m)) * ((dt u)^T @ (B / E)); states pass from chunk to chunk by the short linear
recurrence h_in(next) = exp(A c_end) h_in + that (a `LinearScan` over chunks, as SSD's step 3);
the incoming state adds (C * E) @ (exp(A m) h_in). Only (Q, Q) tensors per chunk, no (L, L).

Numerics. m is the middle of c's range over the chunk, so |A (c_t - m)| <= |A| range(c) / 2 for
every t. The limit: max_n |A[d, n]| * range(c) <= 2 LIMIT = 60 in every chunk. Then both factors
lie in [e^-30, e^30], their products (also in the masked-off upper triangle, up to e^60 ~ 1e26)
stay far from float32's e^88 overflow, kept entries down to e^-60 are normal floats, and every
entry is its true term to rounding (float32 and bfloat16 share the exponent range). Beyond the
limit the factoring breaks (e^30 * e^-30 no longer represents the entry: overflow, underflow, and
clamping would be wrong by up to the full undecayed weight), so there the chunk is halved until
the limit holds, down to Q = 1 (only the diagonal: always exact). Example: |A| = 16, dt = 2 gives
a log-decay of 32 per step, ~1000 over a chunk of 32 where a plain exp(-S) overflows; it runs at
Q = 2. The choice is one for the whole call, from the data (one host sync), so a single extreme
step shrinks every chunk: correct but slower. m is detached: the result does not depend on it.
bf16 operands (`matmul_dtype`) give each M entry ~2^-8 relative error: ~3e-3 of the output scale,
~1e-2 for the dt and A gradients, more for delta_bias's (a sum over all steps of the dt gradient).

Cost, per (token, channel) against the recurrence's one exp(dt A) and ~9 n FLOPs: one exp and one
division per state element (E and B / E) plus 3 exps per chunk; FLOPs 2 Q n for M (the full
product, half of it masked off) plus 2 Q for M @ (dt u) and ~6 n for the diagonal and state terms;
memory b L d (Q + 3 n) saved for the backward.
"""

from __future__ import annotations

import torch

from rtgen.ssm.scan import LinearScan, _finish, _grouped, _prepare, up

LIMIT = 30.0  # |exponent| bound of each factor: e^30 ~ 1e13, products <= e^60, far below float32's e^88


def safe_chunk(delta: torch.Tensor, A: torch.Tensor, chunk_size: int) -> int:
    """Largest Q (chunk_size halved as needed) with max_d |A[d]| * range_t(cumsum dt) <= 2 LIMIT in
    every chunk: delta (b, d, L) after bias/softplus, A (d, n)."""
    b, d, L = delta.shape
    Q = max(1, min(chunk_size, L))
    with torch.no_grad():
        amax = A.abs().amax(-1)[None, :, None]
        while Q > 1:
            c = torch.nn.functional.pad(delta, (0, -L % Q)).reshape(b, d, -1, Q).cumsum(-1)
            span = (c.amax(-1) - c.amin(-1)) * amax
            if not span.numel() or float(span.max()) <= 2 * LIMIT:
                break
            Q //= 2
    return Q


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    chunk_size=32, matmul_dtype=None, h0=None,
):
    """u, delta, z: (b, d, L); A: (d, n) real; B, C: (b, n, L) or grouped (b, g, n, L); D, delta_bias:
    (d,); h0: (b, d, n). Returns y (b, d, L) in u's dtype [, last state (b, d, n)]. `matmul_dtype`
    (e.g. torch.bfloat16) is the operand dtype of the (Q x n) @ (n x Q) products; the result is
    float32 (float64 inputs stay float64)."""
    dtype_in = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u, dt, A = _prepare(u, delta, A, D, z, delta_bias, delta_softplus)
        Bg, Cg = _grouped(up(B)), _grouped(up(C))  # (b, L, g, n)
        b, d, L = u.shape
        g, n = Bg.shape[2], Bg.shape[3]
        if d % g:
            raise ValueError(f"{d} channels cannot be split into {g} groups")
        k = d // g
        Q = safe_chunk(dt, A, chunk_size)
        pad = -L % Q
        nc = (L + pad) // Q
        F = torch.nn.functional
        # chunked layouts: per channel (b, nc, g, k, Q); B, C (b, nc, g, 1, Q, n), shared by a group's channels
        chunks = lambda t: F.pad(t, (0, pad)).reshape(b, g, k, nc, Q).permute(0, 3, 1, 2, 4)  # noqa: E731
        dtc, x = chunks(dt), chunks(dt * u)  # padding: dt = 0 (no decay), x = 0 (no input)
        Bc, Cc = (F.pad(t, (0, 0, 0, 0, 0, pad)).reshape(b, nc, Q, g, n).transpose(2, 3).unsqueeze(3) for t in (Bg, Cg))
        Ak = A.reshape(g, k, n)[:, :, None, :]  # (g, k, 1, n)
        c = dtc.cumsum(-1)  # (b, nc, g, k, Q)
        m = ((c.amax(-1, keepdim=True) + c.amin(-1, keepdim=True)) / 2).detach()
        E = torch.exp((c - m).unsqueeze(-1) * Ak)  # (b, nc, g, k, Q, n), within e^+-LIMIT
        left, right = Cc * E, Bc / E
        # 1. within chunks: strictly lower (Q x n) @ (n x Q) per channel, times dt u; the diagonal C_t . B_t apart
        lo, ro = (left, right) if matmul_dtype is None else (left.to(matmul_dtype), right.to(matmul_dtype))
        M = torch.matmul(lo, ro.transpose(-1, -2)).to(u.dtype).tril(-1)
        y = torch.matmul(M, x.unsqueeze(-1)).squeeze(-1) + (Cc * Bc).sum(-1) * x
        # 2. each chunk's end state from its own inputs: (1 x Q) @ (Q x n), rescaled to the chunk end
        end = torch.exp((c[..., -1:] - m) * Ak[..., 0, :])  # (b, nc, g, k, n)
        states = torch.matmul(x.unsqueeze(-2), right).squeeze(-2) * end
        # 3. carry states across chunks: h_in(c + 1) = exp(A c_end) h_in(c) + states(c)
        decay = torch.exp(c[..., -1:] * Ak[..., 0, :])
        first = up(h0).reshape(b, g, k, n) if h0 is not None else None
        after, last = LinearScan.apply(decay, states, first)
        first = first.unsqueeze(1) if first is not None else states.new_zeros(states[:, :1].shape)
        before = torch.cat([first, after[:, :-1]], 1)
        # 4. the incoming state at every step: C_t exp(A c_t) h_in = (C E) @ (exp(A m) h_in)
        y = y + torch.matmul(left, (torch.exp(m * Ak[..., 0, :]) * before).unsqueeze(-1)).squeeze(-1)
        y = y.permute(0, 2, 3, 1, 4).reshape(b, d, nc * Q)[..., :L]
        out = _finish(y, u, D, z, dtype_in)
    return (out, last.reshape(b, d, n)) if return_last_state else out


__all__ = ["LIMIT", "safe_chunk", "selective_scan_chunked"]
