"""Fused CPU kernel for the Mamba (S6) selective scan, forward and backward: the PyTorch side.

Same semantics as `selective_scan_ref` for real A (d, n) and "variable" B, C of shape (b, n, L)
(or (b, 1, n, L)): delta_bias and softplus, D skip, SiLU(z) gating, the last state; optionally the
Mamba block's dt projection folded in. This module chooses the work units, lays the tensors out for
the kernels (`_kernel_layout`: most are read where they lie), allocates outputs and gradients and
carries the autograd; the numba kernels, and how they work, are in `rtgen.ssm.fused_kernels`.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

from rtgen.ssm.fused_kernels import _LOG2E, CHECKPOINT, HAVE_NUMBA, LANES, TILE

if HAVE_NUMBA:
    import numba

    from rtgen.ssm.fused_kernels import (  # noqa: F401  (_exp, _vexp2, _jit, ...: shared with fused_conv and the tests)
        _exp,
        _jit,
        _one_minus_exp_neg,
        _vexp2,
        scan_bwd,
        scan_fwd,
    )


def _group_width(b: int, d: int) -> int:
    """Channels per work unit: a multiple of LANES, with enough units for every thread."""
    threads = numba.get_num_threads() if HAVE_NUMBA else 1
    blocks = -(-d // LANES)
    groups = max(1, min(blocks, -(-threads // b)))
    while blocks % groups:
        groups += 1
    return blocks // groups * LANES


_NO_Z = np.empty((0, 0, 0), np.float32)
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
                _FusedScan.apply(t["u"], t["delta"], t["A"], t["B"], t["C"], None, None, None, False, False, None)
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


def _kernel_layout(t: torch.Tensor) -> tuple[np.ndarray, int, int]:
    """A (b, c, L) tensor as (a C-contiguous float32 array the kernels read in place, channel-major
    flag, channel offset): (b, L, S) rows of S >= c values when its memory is time-major, a slice of
    a wider projection starting at the offset (the Mamba block's in_proj output); (b, c, L) when
    channel-major (a Conv1d output); else a time-major copy."""
    t = t.detach()
    t = t if t.dtype == torch.float32 else t.float()
    b, c, L = t.shape
    if L > 1 and t.is_contiguous():
        return t.numpy(), 1, 0
    S = t.stride(2)
    if L > 1 and t.stride(1) == 1 and S >= c and (b == 1 or t.stride(0) == L * S):
        off = t.storage_offset() % S
        base = t.storage_offset() - off
        if off + c <= S and base + b * L * S <= t.untyped_storage().nbytes() // 4:
            return torch.as_strided(t, (b, L, S), (L * S, S, 1), base).numpy(), 0, off
    return t.transpose(1, 2).contiguous().numpy(), 0, 0


def _grad_like(channel_major, b: int, c: int, L: int) -> torch.Tensor:
    """An empty float32 gradient, (b, c, L) for a channel-major input, else (b, L, c): autograd then
    need not copy it to match the input's strides (a slice of a wider projection gets a dense one)."""
    return torch.empty(b, c, L) if channel_major else torch.empty(b, L, c)


def _time_major(t: torch.Tensor) -> np.ndarray:
    """A (b, c, L) tensor as a C-contiguous float32 (b, L, c) array (a copy unless already so)."""
    t = t.detach().transpose(1, 2)
    return (t if t.dtype == torch.float32 else t.float()).contiguous().numpy()


def _layouts(*ts) -> tuple[list, np.ndarray]:
    """`_kernel_layout` of each tensor (None -> an empty array), and their (channel-major, offset)
    pairs as the kernels' (4, 2) layout table."""
    arrays, lay = [], np.zeros((4, 2), np.int64)
    for k, t in enumerate(ts):
        a, cm, off = _kernel_layout(t) if t is not None else (_NO_Z, 0, 0)
        arrays.append(a)
        lay[k] = cm, off
    return arrays, lay


def _states(M: torch.Tensor) -> torch.Tensor:
    """B or C: (b, n, L) or (b, 1, n, L) -> (b, n, L), any strides."""
    return M[:, 0] if M.dim() == 4 else M


def _sum_groups(x: torch.Tensor) -> torch.Tensor:
    """x.sum(1) for the kernels' (b, G, L, n) partial sums per channel group, as G - 1 in-place adds of
    contiguous slices: `sum` over that axis took 0.6 ms for a (1, 1, 16k, 16) tensor, a view here."""
    out = x[:, 0]
    for k in range(1, x.shape[1]):
        out = out + x[:, k] if k == 1 else out.add_(x[:, k])
    return out


def _channel_vector(v, d: int) -> np.ndarray:
    return v.detach().float().contiguous().numpy() if v is not None else np.zeros(d, np.float32)


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, dt_weight):
        b, d, L = u.shape
        n = A.shape[1]
        W = _group_width(b, d)
        dp = -(-d // W) * W
        K = CHECKPOINT
        needs = any(ctx.needs_input_grad)
        At = (A.detach().float() * _LOG2E).t().contiguous()  # the kernels take decays as powers of 2
        Bs, Cs = _states(B), _states(C)
        bias, Dv = _channel_vector(delta_bias, d), _channel_vector(D, d)
        out = torch.empty(b, L, d)  # returned as a (b, d, L) view: out_proj reads it without a copy
        last = u.new_empty((b, n, dp), dtype=torch.float32)
        ckpt = u.new_empty((b, -(-L // K), n, dp) if needs else (0, 0, 0, 0), dtype=torch.float32)
        # dt and, with a gate, the ungated output, kept for the backward
        kept = torch.empty((1 if z is None else 2, b, L, d) if needs else (0, 0, 0, 0))
        (uv, dv, zv), lay = _layouts(u, delta, z)
        dtw = dt_weight.detach().float().t().contiguous() if dt_weight is not None else torch.zeros(0, d)
        with _lock:
            scan_fwd(uv, dv, bias, At.numpy(), _time_major(Bs), _time_major(Cs), Dv, zv, z is not None,
                     bool(delta_softplus), W, K, TILE, out.numpy(), last.numpy(), ckpt.numpy(), lay, kept.numpy(),
                     dtw.numpy())
        if needs:
            ctx.save_for_backward(u, delta, At, Bs, Cs, D, z, delta_bias, ckpt, kept, dtw, dt_weight)
            ctx.meta = (W, K, bool(delta_softplus), B.dim(), C.dim(), A.dtype)
        return out.transpose(1, 2).to(u.dtype), last[..., :d].transpose(1, 2)

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, At, Bs, Cs, D, z, delta_bias, ckpt, kept, dtw, dt_weight = ctx.saved_tensors
        W, K, softplus, Bdim, Cdim, Adtype = ctx.meta
        b, d, L = u.shape
        n = At.shape[0]
        dp = ckpt.shape[-1]
        G = dp // W
        go = gy if gy is not None else torch.zeros(b, L, d).transpose(1, 2)
        gl = torch.zeros((b, n, dp))
        if glast is not None:
            gl[..., :d] = glast.transpose(1, 2)
        (uv, dv, zv, gv), lay = _layouts(u, delta, z, go)
        R = dtw.shape[0]
        gu = _grad_like(lay[0, 0], b, d, L)
        gdelta = _grad_like(lay[1, 0], b, d, L) if R == 0 else torch.from_numpy(_NO_Z)
        glow = torch.empty((b, G, L, R) if R else (0, 0, 0, 0))
        gdtw = torch.empty((b, R, dp), dtype=torch.float64)
        gz = _grad_like(lay[2, 0], b, d, L) if z is not None else torch.from_numpy(_NO_Z)
        gA = torch.empty((b, n, dp), dtype=torch.float64)
        gD = torch.empty((b, dp), dtype=torch.float64)
        gbias = torch.empty((b, dp), dtype=torch.float64)
        gB = torch.empty((b, G, L, n))
        gC = torch.empty((b, G, L, n))
        with _lock:
            scan_bwd(uv, At.numpy(), _time_major(Bs), _time_major(Cs), _channel_vector(D, d), zv, z is not None,
                     softplus, gv, gl.numpy(), W, K, TILE, ckpt.numpy(), kept.numpy(), gu.numpy(), gdelta.numpy(),
                     gz.numpy(), gA.numpy(), gD.numpy(), gbias.numpy(), gB.numpy(), gC.numpy(), lay, dv, dtw.numpy(),
                     glow.numpy(), gdtw.numpy())
        gBt = _sum_groups(gB).transpose(1, 2)
        gCt = _sum_groups(gC).transpose(1, 2)
        if Bdim == 4:
            gBt = gBt.unsqueeze(1)
        if Cdim == 4:
            gCt = gCt.unsqueeze(1)
        like = lambda g, x: g.to(x.dtype) if x is not None else None  # noqa: E731  gradients in the inputs' dtypes
        gu, gdelta, gz = (g if lay[k, 0] else g.transpose(1, 2) for k, g in enumerate((gu, gdelta, gz)))
        gw = None
        if R:  # the low-rank steps' and the projection's gradients
            gdelta = _sum_groups(glow).transpose(1, 2)
            gw = like(gdtw.sum(0)[:, :d].t(), dt_weight)
        return (
            like(gu, u), like(gdelta, delta), gA.sum(0).t()[:d].to(Adtype), like(gBt, Bs), like(gCt, Cs),
            like(gD.sum(0)[:d], D) if D is not None else None,
            like(gz, z) if z is not None else None,
            like(gbias.sum(0)[:d], delta_bias) if delta_bias is not None else None, None, None, gw,
        )


def selective_scan_fused(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, dt_weight=None):
    """`selective_scan_ref` semantics on the fused numba kernel (CPU; float32, or bf16/fp16 computed in
    float32 and returned in the input dtype). Gradients for u, delta, A, B, C, D, z and delta_bias.
    With `dt_weight` (d, R), delta is the (b, R, L) low-rank step and the kernel folds the Mamba
    block's dt projection in (delta = dt_weight @ delta, as mamba_ssm's `mamba_inner_fn` does): its
    three thin matmuls and a (b, d, L) tensor each way are spared; gradients go to both.
    The kernels read time-major and channel-major memory where it lies (the transposed views and
    projection slices a Mamba block passes cost no copies); other layouts cost one PyTorch copy each."""
    with torch.autocast("cpu", enabled=False):
        y, last = _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, dt_weight)
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
