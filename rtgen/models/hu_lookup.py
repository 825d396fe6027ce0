"""A HU-to-intensity lookup table: the simplest CT -> MR model, and the floor any synthesis must beat.

Each CT pixel is mapped on its own, through a piecewise-linear table over the windowed CT value
(`bins` knots evenly spaced on [0, 1]): MR = table(CT). Fitted by gradient descent on the same
loss as the networks (`image_regression`), so it is the least-squares / least-absolute lookup of
the training pairs. It cannot tell fat from muscle by anything but HU, nor see anatomy: that is
the point of a baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated

import torch
import torch.nn as nn
from pydantic import Field

from rtgen.core.registry import register_model


@dataclass
class HULookupConfig:
    in_channels: Annotated[int, Field(ge=1, le=1)] = 1  # set by the task: one CT channel
    bins: Annotated[int, Field(ge=2, le=4096)] = 64

    def to_dict(self) -> dict:
        return asdict(self)


class HULookup(nn.Module):
    def __init__(self, cfg: HULookupConfig = HULookupConfig()):
        super().__init__()
        self.config = cfg
        self.table = nn.Parameter(torch.zeros(cfg.bins))

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) windowed CT in [0, 1] -> (B, 1, H, W) MR intensity, linear between knots."""
        pos = ct.clamp(0, 1) * (self.config.bins - 1)
        lo = pos.floor().clamp(max=self.config.bins - 2).long()
        frac = pos - lo
        return self.table[lo] * (1 - frac) + self.table[lo + 1] * frac


register_model("hu_lookup", config=HULookupConfig, task="image_regression")(HULookup)
