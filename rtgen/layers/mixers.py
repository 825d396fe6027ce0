"""Token mixers on 2D maps: Mamba2, self-attention or none, behind one residual wrapper."""

from __future__ import annotations

import torch.nn as nn

from rtgen.layers.attention import SelfAttention
from rtgen.ssm.mamba2 import Mamba2

MIXERS = ("mamba2", "attention", "none")


def make_token_mixer(kind: str, dim: int, d_state: int = 32, headdim: int = 32,
                     attention_head_dim: int = 32) -> nn.Module | None:
    """A sequence mixer over (B, L, dim) tokens, or None for "none"."""
    if kind == "mamba2":
        return Mamba2(dim, d_state=d_state, headdim=min(headdim, 2 * dim))
    if kind == "attention":
        return SelfAttention(dim, attention_head_dim)
    if kind == "none":
        return None
    raise ValueError(f"mixer must be one of {MIXERS}, got {kind!r}")


class TokenMixer(nn.Module):
    """x + LayerNorm(mixer(tokens(x))) on a (B, C, H, W) map."""

    def __init__(self, mixer: nn.Module, dim: int):
        super().__init__()
        self.mixer = mixer
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        return x + self.norm(self.mixer(t)).transpose(1, 2).reshape(b, c, h, w)
