"""A MONAI `AutoencoderKL` for grey 2D slices or 3D volumes: the trainable alternative to the pretrained TAEF2.

DiffMa can run on either of two latent autoencoders, measured against each other: TAEF2
(pretrained on photographs, RGB) and this one, trained on the CT and MR slices themselves
(task `image_autoencoder`). Each of the `channels` levels but the last halves the slice, so the
default four levels give the same /8 latents as TAEF2 and the diffusion networks fit either.

Frozen under diffusion (`rtgen.models.frozen_autoencoders.FrozenAutoencoderKL`), the latent of a slice is
the posterior mean (`encode_mean`): deterministic, so cached latents and predictions are repeatable.
With `spatial_dims: 3` it is DiffKT3D's volume autoencoder (task `volume_autoencoder`):
one network shared by every modality, trained on random crops.
Attention is off by default: on a CPU it costs more than it brings at these sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from rtgen.core.registry import register_model


@dataclass
class AutoencoderKLConfig:
    spatial_dims: Literal[2, 3] = 2  # 2: slices (DiffMa), 3: volumes (DiffKT3D)
    in_channels: Annotated[int, Field(ge=1, le=1)] = 1  # set by the task: one grey channel (CT or MR)
    channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = (32, 64, 128, 128)  # per level; factor 2^(len-1)
    latent_channels: Annotated[int, Field(ge=1, le=256)] = 8
    num_res_blocks: Annotated[int, Field(ge=1, le=16)] = 1  # per level
    norm_num_groups: Annotated[int, Field(ge=1, le=512)] = 16  # must divide every entry of channels
    attention_levels: tuple[bool, ...] | None = None  # per level; None: no attention anywhere
    mid_attention: bool = False  # MONAI's non-local attention at the bottleneck (encoder and decoder)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if not 1 <= len(self.channels) <= 8:
            raise ValueError(f"channels needs 1 to 8 levels, got {len(self.channels)}")
        if self.attention_levels is not None and len(self.attention_levels) != len(self.channels):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, channels {len(self.channels)}")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every entry of channels, not {bad}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        if self.attention_levels is not None:
            d["attention_levels"] = list(self.attention_levels)
        return d


class AutoencoderKL(nn.Module):
    """MONAI AutoencoderKL on (B, 1, H, W) slices in [0, 1] or (B, 1, D, H, W) volumes; latents
    (B, latent_channels, H/f, W/f) or (B, latent_channels, D/f, H/f, W/f)."""

    def __init__(self, cfg: AutoencoderKLConfig = AutoencoderKLConfig()):
        super().__init__()
        from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL  # slow to import: only when built

        self.config = cfg
        levels = len(cfg.channels)
        self.latent_channels = int(cfg.latent_channels)
        self.factor = 2 ** (levels - 1)
        try:
            self.net = MonaiAutoencoderKL(
                spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=1, channels=tuple(cfg.channels),
                num_res_blocks=cfg.num_res_blocks, latent_channels=cfg.latent_channels,
                norm_num_groups=cfg.norm_num_groups,
                attention_levels=tuple(cfg.attention_levels) if cfg.attention_levels is not None else (False,) * levels,
                with_encoder_nonlocal_attn=cfg.mid_attention, with_decoder_nonlocal_attn=cfg.mid_attention)
        except ImportError as e:  # MONAI's attention blocks need einops, an optional dependency of MONAI
            raise ValueError(f"attention needs a package MONAI could not import ({str(e).splitlines()[0]})") from None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> posterior (mean, sigma), each (B, C, H/f, W/f)."""
        self._check(x)
        return self.net.encode(x)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: the deterministic latent a frozen autoencoder hands to diffusion."""
        return self.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1, f h, f w), unclamped (the loss sees the raw output)."""
        return self.net.decode(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction from a posterior sample, mean, sigma)."""
        mu, sigma = self.encode(x)
        return self.decode(self.net.sampling(mu, sigma)), mu, sigma

    def _check(self, x: torch.Tensor) -> None:
        dims = self.config.spatial_dims
        if x.ndim != dims + 2 or any(n % self.factor for n in x.shape[2:]):
            kind = "(B, 1, H, W)" if dims == 2 else "(B, 1, D, H, W)"
            raise ValueError(f"autoencoder_kl ({dims}D) expects {kind} with every side a multiple of {self.factor}, "
                             f"got {tuple(x.shape)}")


register_model("autoencoder_kl", config=AutoencoderKLConfig, task="image_autoencoder")(AutoencoderKL)
