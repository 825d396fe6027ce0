"""Fused CPU kernel for the Mamba block's causal depthwise conv and its SiLU, forward and backward.

y[t, c] = silu(bias[c] + sum_k w[c, k] x[t - K + 1 + k, c]) (zeros before t = 0), the same numbers as
`F.silu(conv1d(x, groups=C, padding=K - 1)[..., :L])`.

Why a kernel of its own: PyTorch runs this as a general (1 x K) convolution, whose backward (17 ms
for 33 MFLOP at L = 16k, 128 channels, in one profile) and layout copies grow faster than L: a
Mamba block with it takes 1.4-1.5x the time at 64k tokens (`benchmarks/bench_mamba_block.py`). Here
one pass over L, vectorised over channels, reads x in the block's own time-major layout (the in_proj
output, channels contiguous) and writes y and the gradients in it.

The backward recomputes the pre-activation (K multiply-adds) rather than storing it, and forms the
input gradient in the same pass: each step's gradient g[t] adds w[c, k] g[t] to gx[t - K + 1 + k],
rows that are still in L1. Weight and bias gradients are summed in float32 per block of steps and in
float64 across blocks. Work units are (batch, group of channels), as in `rtgen.ssm.fused`.
"""

from __future__ import annotations

import numpy as np
import torch

from rtgen.ssm import fused

BLOCK = 256  # steps per float32 partial sum of the weight and bias gradients

if fused.HAVE_NUMBA:
    import numba
    from numba import prange

    from rtgen.ssm.fused_kernels import _exp, _jit, _unit_rows, _unit_vector

    _u64 = numba.uint64
    _ONE = np.float32(1.0)

    @numba.njit(**_jit)
    def _conv_rows(x, off, bi, c0, cw, t, w, bias, acc):
        """acc[i] = bias + sum_k w[k, i] x[t - K + 1 + k] for channels c0..c0+cw of batch bi (x: time-major
        rows of S values, the channels from off; w: the unit's (K, W) weights)."""
        s = x.reshape(x.size)
        L, S = x.shape[1], x.shape[2]
        K = w.shape[0]
        for i in range(_u64(cw)):
            acc[i] = bias[i]
        for k in range(K):
            r = t - K + 1 + k
            if r >= 0:
                sb = _u64((bi * L + r) * S + off + c0)
                wk = w[k]
                for i in range(_u64(cw)):
                    acc[i] += wk[i] * s[sb + i]

    @numba.njit(parallel=True, **_jit)
    def _conv_fwd(x, off, w, bias, W, y):
        """x: (b, L, S) rows, channels from off; y: (b, L, C); w: (K, C); bias: (C,); all C-contiguous."""
        b, L, C = y.shape
        G = -(-C // W)
        for unit in prange(b * G):
            bi = unit // G
            c0 = (unit % G) * W
            cw = min(W, C - c0)
            wu, bu = _unit_rows(w, c0, cw, W, w.shape[0]), _unit_vector(bias, c0, cw, W)
            acc = np.zeros(W, np.float32)
            o = y.reshape(y.size)
            for t in range(L):
                _conv_rows(x, off, bi, c0, cw, t, wu, bu, acc)
                ob = _u64((bi * L + t) * C + c0)
                for i in range(_u64(cw)):
                    a = acc[i]
                    o[ob + i] = a / (_ONE + _exp(-a))

    @numba.njit(parallel=True, **_jit)
    def _conv_bwd(x, off, w, bias, gy, W, gx, gw, gb):
        """x as in `_conv_fwd`; gy, gx: (b, L, C); gw: (b, C, K), gb: (b, C) float64 sums per batch."""
        b, L, C = gx.shape
        S = x.shape[2]
        K = w.shape[0]
        G = -(-C // W)
        for unit in prange(b * G):
            bi = unit // G
            c0 = (unit % G) * W
            cw = min(W, C - c0)
            wu, bu = _unit_rows(w, c0, cw, W, w.shape[0]), _unit_vector(bias, c0, cw, W)
            acc = np.zeros(W, np.float32)
            ga = np.zeros(W, np.float32)
            gw32 = np.zeros((K, W), np.float32)
            gb32 = np.zeros(W, np.float32)
            gw64 = np.zeros((K, W), np.float64)
            gb64 = np.zeros(W, np.float64)
            sx = x.reshape(x.size)
            sg = gy.reshape(gy.size)
            og = gx.reshape(gx.size)
            for t in range(L):
                _conv_rows(x, off, bi, c0, cw, t, wu, bu, acc)
                tb = _u64((bi * L + t) * C + c0)
                for i in range(_u64(cw)):  # through the SiLU
                    a = acc[i]
                    sgm = _ONE / (_ONE + _exp(-a))
                    ga[i] = sg[tb + i] * sgm * (_ONE + a * (_ONE - sgm))
                for i in range(_u64(cw)):
                    gb32[i] += ga[i]
                for k in range(K):
                    r = t - K + 1 + k
                    if r >= 0:
                        xb = _u64((bi * L + r) * S + off + c0)
                        rb = _u64((bi * L + r) * C + c0)
                        gwk = gw32[k]
                        wk = wu[k]
                        if k == K - 1:  # row t is first reached here
                            for i in range(_u64(cw)):
                                gwk[i] += ga[i] * sx[xb + i]
                                og[rb + i] = wk[i] * ga[i]
                        else:
                            for i in range(_u64(cw)):
                                gwk[i] += ga[i] * sx[xb + i]
                                og[rb + i] += wk[i] * ga[i]
                if t % BLOCK == BLOCK - 1 or t == L - 1:
                    for k in range(K):
                        for i in range(W):
                            gw64[k, i] += gw32[k, i]
                            gw32[k, i] = 0
                    for i in range(W):
                        gb64[i] += gb32[i]
                        gb32[i] = 0
            for i in range(cw):
                gb[bi, c0 + i] = gb64[i]
                for k in range(K):
                    gw[bi, c0 + i, k] = gw64[k, i]


def _rows(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """(b, C, L) -> time-major rows the kernels read in place and the channel offset in them (a slice
    of the in_proj output is read where it lies); channel-major memory is copied."""
    a, channel_major, off = fused._kernel_layout(t)
    return (fused._time_major(t), 0) if channel_major else (a, off)


class _FusedCausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        b, C, L = x.shape
        W = fused._group_width(b, C)
        w = weight.detach().reshape(C, -1).float().t().contiguous()  # (K, C): a unit's weights by _unit_rows
        bv = bias.detach().float().contiguous() if bias is not None else torch.zeros(C)
        y = torch.empty(b, L, C)
        with fused._lock:
            _conv_fwd(*_rows(x), w.numpy(), bv.numpy(), W, y.numpy())
        ctx.save_for_backward(x, w, bv)
        ctx.meta = (W, weight.shape, weight.dtype, bias is not None)
        return y.transpose(1, 2).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, w, bv = ctx.saved_tensors
        W, wshape, wdtype, has_bias = ctx.meta
        b, C, L = x.shape
        gx = torch.empty(b, L, C)
        gw = torch.empty(b, C, w.shape[0], dtype=torch.float64)
        gb = torch.empty(b, C, dtype=torch.float64)
        with fused._lock:
            _conv_bwd(*_rows(x), w.numpy(), bv.numpy(), fused._time_major(gy), W, gx.numpy(), gw.numpy(), gb.numpy())
        return (gx.transpose(1, 2).to(x.dtype), gw.sum(0).reshape(wshape).to(wdtype),
                gb.sum(0).to(wdtype) if has_bias else None)


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU, float32/bf16/fp16, a depthwise (C, 1, K) weight: what the fused conv takes."""
    return (x.device.type == "cpu" and x.dim() == 3 and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and weight.dim() == 3 and weight.shape[0] == x.shape[1] and weight.shape[1] == 1)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """silu(causal depthwise conv1d(x)): x (b, C, L), weight (C, 1, K), bias (C,) -> (b, C, L), a view
    of time-major memory. Gradients for x, weight and bias."""
    with torch.autocast("cpu", enabled=False):
        return _FusedCausalConv.apply(x, weight, bias)


__all__ = ["causal_conv_silu", "supports"]
