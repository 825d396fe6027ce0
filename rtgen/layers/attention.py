"""Multi-head self-attention over token sequences, shared by every network that mixes tokens by attention."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (B, L, C) with PyTorch's fused SDPA kernels."""

    def __init__(self, dim: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, L, c = x.shape
        q, k, v = self.qkv(x).view(b, L, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, L, c))
