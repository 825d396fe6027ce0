"""2D dose-regression UNets sharing one skeleton (MambaUNetV2 and its baselines).

Encoder block: Conv2d -> BatchNorm -> ReLU -> token mixer on the flattened map -> LayerNorm
-> residual. The mixer is Mamba2 (`mamba_unet_v2`), self-attention (`transformer_unet`) or
nothing (`unet`). Three encoder levels, a bottleneck with a deeper mixer stage, three decoder
levels (bilinear upsampling + Conv2d, skip concatenation with 1x1 projections where channels
differ), and a final 1x1 convolution to one dose channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from torch.utils.checkpoint import checkpoint

from rtgen.core.registry import register_model
from rtgen.layers.mixers import MIXERS, TokenMixer, make_token_mixer

Positive = Annotated[int, Field(ge=1, le=4096)]  # a bound, so a corrupt config cannot ask for 1e40 weights


@dataclass
class UNet2DConfig:
    in_channels: Positive = 20  # set by the task from its input features
    channels: tuple[Positive, Positive, Positive, Positive] = (32, 64, 128, 256)  # three levels, then the bottleneck
    mixer: Literal["mamba2", "attention", "none"] = "mamba2"
    mixer_from_level: Annotated[int, Field(ge=0, le=3)] = 0  # shallower levels use no mixer (time at full resolution)
    bottleneck_depth: Positive = 2
    downsample: Literal["maxpool", "conv"] = "maxpool"  # or strided convolution
    d_state: Positive = 32
    headdim: Positive = 32
    attention_head_dim: Positive = 32
    gradient_checkpointing: bool = False

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 4:
            raise ValueError(f"channels needs four entries (three levels and the bottleneck), got {self.channels}")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


def make_mixer(kind: str, dim: int, cfg: UNet2DConfig) -> nn.Module | None:
    return make_token_mixer(kind, dim, d_state=cfg.d_state, headdim=cfg.headdim, attention_head_dim=cfg.attention_head_dim)


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


@register_model("mamba_unet_v2", config=UNet2DConfig, task="dose_regression", mixer="mamba2",
                description="MambaUNetV2: Conv + Mamba2 UNet on 2D axial slices")
@register_model("unet", config=UNet2DConfig, task="dose_regression", mixer="none",
                description="the same UNet skeleton without a token mixer (Table I baseline)")
@register_model("transformer_unet", config=UNet2DConfig, task="dose_regression", mixer="attention",
                description="the same skeleton with self-attention in place of Mamba2 (Table I baseline)")
class DoseUNet2D(nn.Module):
    """(B, C, H, W) features -> (B, 1, H, W) scaled dose."""

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
