"""Mamba2 block (Dao & Gu 2024): in_proj, causal conv1d, SSD, gated RMSNorm, out_proj."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rtgen.ssm import dispatch
from rtgen.ssm.mamba import init_dt_bias

# SSD chunk on the CPU: of 16, 32, 64, 128 and 256, 32 gave the fastest Mamba2 block forward+backward at
# 256, 1,024, 4,096 and 16,384 tokens (2-core AMD EPYC, fp32; 5-15 % ahead of 64). CUDA keeps 64.
CPU_CHUNK = 32


class RMSNormGated(nn.Module):
    """RMSNorm(x * SiLU(z)) * weight (mamba_ssm's norm_before_gate=False)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if z is not None:
            x = x * F.silu(z.float())
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class Mamba2(nn.Module):
    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int | None = None, A_init_range=(1.0, 16.0), bias: bool = False,
                 conv_bias: bool = True):
        super().__init__()
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not a multiple of headdim = {headdim}")
        self.headdim, self.ngroups, self.d_state, self.chunk_size = headdim, ngroups, d_state, chunk_size
        self.nheads = self.d_inner // headdim
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(init_dt_bias(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNormGated(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        b, L, _ = u.shape
        gn = self.ngroups * self.d_state
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        y = dispatch.ssd(
            x.reshape(b, L, self.nheads, self.headdim), dt, -torch.exp(self.A_log.float()),
            B.reshape(b, L, self.ngroups, self.d_state), C.reshape(b, L, self.ngroups, self.d_state),
            self.chunk_size or (CPU_CHUNK if u.device.type == "cpu" else 64), D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
        )
        return self.out_proj(self.norm(y.reshape(b, L, self.d_inner), z))
