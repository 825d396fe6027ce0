"""Mamba (S6) blocks: the selective SSM layer of Gu & Dao; `bidirectional=True` is Vision Mamba's variant
(shared projections, one SSM per direction).

Sequence in and out: (B, L, d_model). Initialisation follows the official `mamba_simple`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtgen.ssm import dispatch


def init_dt_bias(n: int, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4) -> torch.Tensor:
    """softplus^-1 of time steps drawn log-uniformly in [dt_min, dt_max]."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class SelectiveSSM(nn.Module):
    """One direction of a Mamba block after in_proj: causal depthwise conv, SiLU, selective scan."""

    def __init__(self, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int = 8, conv_bias: bool = True,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_scale: float = 1.0):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(init_dt_bias(d_inner, dt_min, dt_max))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # A = -exp(A_log) = -(1..d_state)
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def causal_conv(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(causal depthwise conv(x)), (B, d, L) -> (B, d, L). On the CPU its output has channels
        contiguous, as the projections around it do, so x_proj and the fused scan read it without a
        copy: the fused numba kernel (`rtgen.ssm.fused_conv`, 5-10x faster with its backward) when it
        runs, else a (1 x K) conv2d in channels-last order (the same weights, the same numbers up to
        rounding)."""
        L = x.shape[-1]
        if x.is_cuda:
            return F.silu(self.conv1d(x)[..., :L])
        if dispatch.fused_causal_conv(x, self.conv1d.weight):
            from rtgen.ssm.fused_conv import causal_conv_silu

            return causal_conv_silu(x, self.conv1d.weight, self.conv1d.bias)
        k = self.conv1d.kernel_size[0]
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x4, self.conv1d.weight.unsqueeze(2), self.conv1d.bias, padding=(0, k - 1), groups=x.shape[1])
        return F.silu(y[:, :, 0, :L])

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: (B, d_inner, L) -> (B, d_inner, L)."""
        x = self.causal_conv(x)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        # dt_proj's weight, then its bias, are applied inside the scan (on the fused kernel, the matmul too)
        return dispatch.selective_scan_projected_dt(
            x, dt.transpose(1, 2), self.dt_proj.weight, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )


class Mamba(nn.Module):
    """in_proj -> (x, z); SSM(x) gated by SiLU(z); out_proj."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 bias: bool = False, conv_bias: bool = True, bidirectional: bool = False):
        super().__init__()
        self.d_model, self.d_inner = d_model, expand * d_model
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.forward_ssm = SelectiveSSM(self.d_inner, d_state, d_conv, rank, conv_bias)
        self.backward_ssm = SelectiveSSM(self.d_inner, d_state, d_conv, rank, conv_bias) if bidirectional else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        # split along channels in the projection's own (B, L, 2 d_inner) layout: the backward then joins
        # the two gradients row by row (a transposed chunk made that join a strided copy: 14 ms at L 16k)
        x, z = (t.transpose(1, 2) for t in self.in_proj(hidden).split(self.d_inner, dim=-1))
        y = self.forward_ssm(x, z)
        if self.backward_ssm is not None:  # the reversed sequence, own parameters, outputs summed
            y = y + self.backward_ssm(x.flip(-1), z.flip(-1)).flip(-1)
        return self.out_proj(y.transpose(1, 2))
