"""DiffMa's Vision Embedder f_ve (paper Fig. 3, eq. 6-8): CT latent -> soft-masked CT tokens.

The CT latent is cut into patches of the same size as the MR latent patches, so CT token k and MR
token k cover the same pixels. A strided 2D convolution embeds each patch to D (no positional or
time embedding: the paper's Fig. 3). A channel-attention module (CBAM's channel attention, Woo et
al. 2018) treats the L tokens as the channels: each token is squeezed over D by average and max
pooling, a shared two-layer MLP mixes the L squeezed values across tokens, and a sigmoid gives the
soft mask m in (0, 1)^(B x L), one weight per token, "token-level weights" of the paper. Because
the MLP spans tokens, the embedder is built for one token grid (`grid`).

The mask scales the embeddings, m * e, which are the per-token condition; the mask itself is also
returned, because the paper's blocks weight the scanned sequence with it. The global condition is
the mean of the unmasked embeddings over tokens: the paper uses mean(BioMedCLIP(x_ct)) there, but
BioMedCLIP's weights cannot be downloaded here, so a pooled embedding of the same CT stands in.

Pre-training: `cross_info_nce` (eq. 7-8) on the flattened token embeddings, then `freeze()`
before the diffusion model is trained, as the paper does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class VisionCondition(NamedTuple):
    """What the embedder gives the DiffMa blocks: `tokens` m*e (B, L, D), `pooled` (B, D), `mask` m (B, L),
    and the CT latent itself (B, C, h, w) for a network that also takes it at its input."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    latent: torch.Tensor | None = None


class TokenChannelAttention(nn.Module):
    """m = sigmoid(MLP(mean_D e) + MLP(max_D e)): CBAM channel attention with the L tokens as channels."""

    def __init__(self, n_tokens: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, n_tokens // reduction)
        self.mlp = nn.Sequential(nn.Linear(n_tokens, hidden), nn.ReLU(), nn.Linear(hidden, n_tokens))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L) in (0, 1)."""
        return torch.sigmoid(self.mlp(e.mean(-1)) + self.mlp(e.amax(-1)))


class VisionEmbedder(nn.Module):
    """f_ve: CT latent (B, C, h, w) -> VisionCondition; `soft_mask=False` gives m = 1 (the ablation)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, grid: tuple[int, int], soft_mask: bool = True):
        super().__init__()
        self.patch_size, self.grid, self.soft_mask = patch_size, tuple(grid), soft_mask
        self.embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.attention = TokenChannelAttention(self.grid[0] * self.grid[1]) if soft_mask else None

    def embed_tokens(self, ct: torch.Tensor) -> torch.Tensor:
        """Unmasked patch embeddings e (B, L, D), tokens in row-major order of the patch grid."""
        e = self.embed(ct)
        if tuple(e.shape[-2:]) != self.grid:
            p = self.patch_size
            raise ValueError(f"the vision embedder was built for a {self.grid[0] * p} x {self.grid[1] * p} latent "
                             f"(patch {p}), got {tuple(ct.shape[-2:])}")
        return e.flatten(2).transpose(1, 2)

    def forward(self, ct: torch.Tensor) -> VisionCondition:
        e = self.embed_tokens(ct)
        if self.attention is None:
            m = torch.ones(e.shape[:2], dtype=e.dtype, device=e.device)
            return VisionCondition(e, e.mean(1), m, ct)
        m = self.attention(e)
        return VisionCondition(e * m.unsqueeze(-1), e.mean(1), m, ct)

    def freeze(self) -> VisionEmbedder:
        """Fix the pre-trained embedder for diffusion training (paper: its parameters stay fixed)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()


def cross_info_nce(tokens: torch.Tensor, tau: float = 0.07, other: torch.Tensor | None = None) -> torch.Tensor:
    """Cross InfoNCE of eq. 7-8 over a batch of embeddings (B, L, D) (or (B, N)).

    Each sample's tokens are flattened to one (L*D) vector and L2-normalised; S = e e^T / tau, and
    the loss is -1/B sum_k log(exp(S_kk) / sum_j exp(S_kj)): sample k's positive is its own column,
    every other CT of the batch a negative. As written in the paper both sides are the same batch,
    so S_kk = 1/tau and the loss pushes the embeddings of different CT slices apart ("focus on
    the differences between CT images"). `other` (e.g. a second view of the same slices) replaces
    the right-hand side, giving the CLIP form the paper cites; the positives stay on the diagonal.
    (Eq. 8 prints exp(S_i,i) in the numerator; with k the summation index that is S_kk.)
    """
    if tokens.shape[0] < 2:
        raise ValueError("the cross InfoNCE loss needs at least two samples in the batch (the negatives)")
    a = F.normalize(tokens.flatten(1), dim=1)
    b = a if other is None else F.normalize(other.flatten(1), dim=1)
    logits = a @ b.t() / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))
