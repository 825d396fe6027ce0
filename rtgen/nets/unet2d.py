"""2D dose-regression UNets sharing one skeleton (MambaUNetV2 and its baselines).

Encoder block: Conv2d -> BatchNorm -> ReLU -> token mixer on the flattened map -> LayerNorm
-> residual. The mixer is Mamba2 (`mamba_unet_v2`), self-attention (`transformer_unet`) or
nothing (`unet`). Three encoder levels, a bottleneck with a deeper mixer stage, three decoder
levels (bilinear upsampling + Conv2d, skip concatenation with 1x1 projections where channels
differ), and a final 1x1 convolution to one dose channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rtgen.ssm.mamba2 import Mamba2

MIXERS = ("mamba2", "attention", "none")


@dataclass
class UNet2DConfig:
    in_channels: int = 20
    channels: tuple[int, ...] = (32, 64, 128, 256)  # three encoder levels, then the bottleneck
    mixer: str = "mamba2"
    mixer_from_level: int = 0  # levels shallower than this use no mixer (saves time at full resolution)
    bottleneck_depth: int = 2
    downsample: str = "maxpool"  # or "conv" (strided)
    d_state: int = 32
    headdim: int = 32
    attention_head_dim: int = 32
    gradient_checkpointing: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 4:
            raise ValueError(f"channels needs four entries (three levels and the bottleneck), got {self.channels}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.downsample not in ("maxpool", "conv"):
            raise ValueError(f"downsample must be 'maxpool' or 'conv', got {self.downsample!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


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


def make_mixer(kind: str, dim: int, cfg: UNet2DConfig) -> nn.Module | None:
    if kind == "mamba2":
        headdim = min(cfg.headdim, 2 * dim)
        return Mamba2(dim, d_state=cfg.d_state, headdim=headdim, chunk_size=64)
    if kind == "attention":
        return SelfAttention(dim, cfg.attention_head_dim)
    return None


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


class EncoderBlock(nn.Module):
    """Conv2d -> BatchNorm -> ReLU -> [token mixer -> LayerNorm -> residual] x depth."""

    def __init__(self, cin: int, cout: int, mixer: str, cfg: UNet2DConfig, depth: int = 1):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        mixers = [make_mixer(mixer, cout, cfg) for _ in range(depth)] if mixer != "none" else []
        self.mixers = nn.ModuleList(TokenMixer(m, cout) for m in mixers)

    def forward(self, x):
        x = self.conv(x)
        for m in self.mixers:
            x = m(x)
        return x


class Up(nn.Module):
    """Bilinear upsampling + Conv2d, concatenation with the (projected) skip, encoder-style block."""

    def __init__(self, cin: int, skip: int, cout: int, mixer: str, cfg: UNet2DConfig):
        super().__init__()
        self.up_conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.skip_proj = nn.Conv2d(skip, cout, 1) if skip != cout else nn.Identity()
        self.block = EncoderBlock(2 * cout, cout, mixer, cfg)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up_conv(x)
        return self.block(torch.cat([x, self.skip_proj(skip)], 1))


class DoseUNet2D(nn.Module):
    def __init__(self, cfg: UNet2DConfig):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, cb = cfg.channels

        def mixer_at(level):
            return cfg.mixer if level >= cfg.mixer_from_level else "none"

        self.enc = nn.ModuleList([
            EncoderBlock(cfg.in_channels, c1, mixer_at(0), cfg),
            EncoderBlock(c1, c2, mixer_at(1), cfg),
            EncoderBlock(c2, c3, mixer_at(2), cfg),
        ])
        if cfg.downsample == "conv":
            self.down = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in (c1, c2, c3))
        else:
            self.down = nn.ModuleList(nn.MaxPool2d(2) for _ in range(3))
        self.bottleneck = EncoderBlock(c3, cb, mixer_at(3), cfg, depth=cfg.bottleneck_depth)
        self.dec = nn.ModuleList([
            Up(cb, c3, c3, mixer_at(2), cfg),
            Up(c3, c2, c2, mixer_at(1), cfg),
            Up(c2, c1, c1, mixer_at(0), cfg),
        ])
        self.head = nn.Conv2d(c1, 1, 1)

    def _run(self, module, *args):
        if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) features -> (B, 1, H, W) dose in the scaled [-1, 1] range."""
        skips = []
        for enc, down in zip(self.enc, self.down):
            x = self._run(enc, x)
            skips.append(x)
            x = down(x)
        x = self._run(self.bottleneck, x)
        for dec, skip in zip(self.dec, reversed(skips)):
            x = self._run(dec, x, skip)
        return self.head(x)
