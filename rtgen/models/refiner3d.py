"""A small residual 3D UNet that refines a dose another model already predicted.

Why 3D and why small: the gradient-boosted model (`lightgbm_dose`) sees one voxel at a time, so its
dose is smooth where plans are sharp (PTV edges, OAR sparing) and it cannot see the neighbourhood
that makes a voxel's dose. A 3D network sees that neighbourhood, but trained from scratch on 2 CPU
cores it would learn far less than the trees did. Refining is the cheap split: the trees give the
bulk of the dose, the network learns only what they miss, from patches.

The network is MONAI's residual UNet (`monai.networks.nets.UNet` with residual units, instance
norm), followed by a 1x1x1 head initialised to zero: before training the residual is exactly 0, so
the refined dose starts as the base prediction and training can only move it from there. It
returns the residual dose in the task's scale (Gy / 80); the task adds it to the base prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field

from rtgen.core.registry import register_model

Width = Annotated[int, Field(ge=1, le=1024)]


@dataclass
class Refiner3DConfig:
    in_channels: Annotated[int, Field(ge=1, le=256)] = 12  # set by the task from its input volumes
    channels: tuple[Width, ...] = (16, 32, 64, 128)  # one width a level; depth = len(channels) (2 to 6)
    res_units: Annotated[int, Field(ge=0, le=4)] = 1  # residual units per level (0: plain convolutions)
    norm: Literal["instance", "batch"] = "instance"  # instance: patch statistics, batch size 1 is fine
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if not 2 <= len(self.channels) <= 6:
            raise ValueError(f"channels needs 2 to 6 levels, got {self.channels}")

    @property
    def divisor(self) -> int:
        """Patch sides must be multiples of this (one halving a level below the first)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class DoseRefiner3D(nn.Module):
    """Residual 3D UNet (MONAI) predicting a correction to a base dose, zero at initialisation."""

    def __init__(self, cfg: Refiner3DConfig = Refiner3DConfig()):
        super().__init__()
        from monai.networks.nets import UNet  # imported here: MONAI is slow to import, `rtgen --help` is not

        self.config = cfg
        width = cfg.channels[0]
        self.body = UNet(spatial_dims=3, in_channels=cfg.in_channels, out_channels=width, channels=cfg.channels,
                         strides=(2,) * (len(cfg.channels) - 1), num_res_units=cfg.res_units,
                         norm=cfg.norm, dropout=cfg.dropout)
        self.head = nn.Sequential(nn.PReLU(width), nn.Conv3d(width, 1, 1))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, D, H, W) -> (B, 1, D, H, W) residual dose (task scale)."""
        return self.head(self.body(x))


register_model("dose_refiner_3d", config=Refiner3DConfig, task="dose_refine")(DoseRefiner3D)
