"""MD-Dose (Fu et al.): a Mamba-UNet noise predictor guided by a Mamba structure encoder.

Noise predictor (paper Fig. 1b, 1d): patch embedding; Mamba blocks (LayerNorm, then two
branches, linear expansion -> 1D conv -> SiLU -> SSM and linear -> SiLU, Hadamard product,
projection back, reshape to the map) with the diffusion time encoded and added to each block's
output; channels double at each downsampling and halve at each upsampling; skip connections.
Structure encoder (Fig. 1c): mirrors the predictor's encoder on the structure image c
(CT, PTV, OARs); each level's output is added to the predictor's encoder output at that level.
For the paper's ablation (Table 3) the encoder can be convolutional, a transformer, or absent
(then c is concatenated to x_t).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from rtgen.core.registry import register_model
from rtgen.layers.attention import SelfAttention
from rtgen.layers.embeddings import timestep_embedding
from rtgen.ssm.mamba import Mamba

Positive = Annotated[int, Field(ge=1, le=4096)]  # a bound, so a corrupt config cannot ask for 1e40 weights

ENCODERS = ("mamba", "conv", "transformer", "none")


@dataclass
class MDDoseConfig:
    in_channels: Positive = 1  # the noisy dose x_t
    cond_channels: Positive = 9  # structure image c: CT, PTV and O = 7 OARs (set by the task from its features)
    base_channels: Positive = 72  # about 30 M parameters, the paper's Table 2 size
    levels: Annotated[int, Field(ge=1, le=6)] = 4  # down-sampling stages of the encoder (and of the structure encoder)
    patch_size: Positive = 2
    d_state: Positive = 16
    bidirectional: bool = True  # as the public code scans both ways
    structure_encoder: Literal["mamba", "conv", "transformer", "none"] = "mamba"
    time_dim: Annotated[int, Field(ge=2, le=4096, multiple_of=2)] = 128

    def __post_init__(self):
        if self.structure_encoder not in ENCODERS:
            raise ValueError(f"structure_encoder must be one of {ENCODERS}, got {self.structure_encoder!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class MambaBlock2d(nn.Module):
    """Map -> tokens -> LayerNorm -> Mamba (two gated branches, SSM) -> map, + time, with a residual."""

    def __init__(self, dim: int, time_dim: int | None, d_state: int = 16, bidirectional: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, bidirectional=bidirectional)
        self.time = nn.Linear(time_dim, dim) if time_dim else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.mamba(self.norm(x.flatten(2).transpose(1, 2))).transpose(1, 2).reshape(b, c, h, w)
        if self.time is not None and temb is not None:
            y = y + self.time(temb)[:, :, None, None]
        return x + y


class ConvBlock2d(nn.Module):
    def __init__(self, dim: int, **_):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(min(8, dim), dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1),
                                  nn.GroupNorm(min(8, dim), dim), nn.SiLU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x, temb=None):
        return x + self.body(x)


class TransformerBlock2d(nn.Module):
    def __init__(self, dim: int, **_):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, temb=None):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


def _block(kind: str, dim: int, cfg: MDDoseConfig, time_dim: int | None):
    if kind == "mamba":
        return MambaBlock2d(dim, time_dim, cfg.d_state, cfg.bidirectional)
    if kind == "conv":
        return ConvBlock2d(dim)
    return TransformerBlock2d(dim)


class Encoder(nn.Module):
    """Patch embedding, then per level a block and a down-sampling that doubles the channels."""

    def __init__(self, in_ch: int, cfg: MDDoseConfig, kind: str, time_dim: int | None):
        super().__init__()
        C = cfg.base_channels
        self.embed = nn.Conv2d(in_ch, C, cfg.patch_size, stride=cfg.patch_size)
        self.blocks = nn.ModuleList(_block(kind, C * 2**i, cfg, time_dim) for i in range(cfg.levels))
        self.downs = nn.ModuleList(nn.Conv2d(C * 2**i, C * 2 ** (i + 1), 2, stride=2) for i in range(cfg.levels))

    def forward(self, x, temb=None, add: list[torch.Tensor] | None = None):
        x = self.embed(x)
        skips = []
        for i, (block, down) in enumerate(zip(self.blocks, self.downs)):
            x = block(x, temb)
            if add is not None:
                x = x + add[i]  # structure features fused at the same level
            skips.append(x)
            x = down(x)
        return x, skips


@register_model("md_dose", config=MDDoseConfig, task="dose_diffusion",
                description="MD-Dose: diffusion with a Mamba-UNet noise predictor and a Mamba structure encoder")
class MDDoseNet(nn.Module):
    """forward(x_t (B, 1, H, W), t (B,), c (B, cond, H, W)) -> prediction (B, 1, H, W)."""

    def __init__(self, cfg: MDDoseConfig):
        super().__init__()
        self.cfg = cfg
        C, L, td = cfg.base_channels, cfg.levels, cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        concat = cfg.structure_encoder == "none"
        self.encoder = Encoder(cfg.in_channels + (cfg.cond_channels if concat else 0), cfg, "mamba", td)
        self.structure = None if concat else Encoder(cfg.cond_channels, cfg, cfg.structure_encoder, None)
        self.bottleneck = MambaBlock2d(C * 2**L, td, cfg.d_state, cfg.bidirectional)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(C * 2 ** (i + 1), C * 2**i, 2, stride=2) for i in reversed(range(L)))
        self.fuse = nn.ModuleList(nn.Conv2d(2 * C * 2**i, C * 2**i, 1) for i in reversed(range(L)))
        self.dec = nn.ModuleList(MambaBlock2d(C * 2**i, td, cfg.d_state, cfg.bidirectional) for i in reversed(range(L)))
        self.head = nn.ConvTranspose2d(C, cfg.in_channels, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        multiple = self.cfg.patch_size * 2**self.cfg.levels
        if x_t.shape[-1] % multiple or x_t.shape[-2] % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {tuple(x_t.shape[-2:])}")
        temb = self.time_mlp(timestep_embedding(t.expand(x_t.shape[0]) if t.dim() == 0 else t, self.cfg.time_dim))
        if self.structure is None:
            h, skips = self.encoder(torch.cat([x_t, cond], 1), temb)
        else:
            _, struct = self.structure(cond)
            h, skips = self.encoder(x_t, temb, add=struct)
        h = self.bottleneck(h, temb)
        for up, fuse, dec, skip in zip(self.ups, self.fuse, self.dec, reversed(skips)):
            h = dec(fuse(torch.cat([up(h), skip], 1)), temb)
        return self.head(h)
