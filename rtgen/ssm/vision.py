"""Run a sequence block over a 2D or 3D feature map: map -> tokens (in chosen orders) -> block -> map."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from rtgen.ssm.mamba import Mamba
from rtgen.ssm.mamba2 import Mamba2
from rtgen.ssm.orders import inverse, token_order

BLOCKS: dict[str, Callable[..., nn.Module]] = {"mamba": Mamba, "bimamba": functools.partial(Mamba, bidirectional=True), "mamba2": Mamba2}


class VisionSSM(nn.Module):
    """x + mean over orders of unorder(block(order(LayerNorm(tokens)))).

    Input (B, C, H, W) or (B, C, D, H, W). `orders` names token orders (see rtgen.ssm.orders);
    with `share=False` every order gets its own block (as VMamba's four directions do).
    """

    def __init__(self, dim: int, block: str | Callable[[int], nn.Module] = "mamba",
                 orders: Sequence[str] = ("raster",), share: bool = True, **block_kwargs):
        super().__init__()
        make = BLOCKS[block] if isinstance(block, str) else block
        self.orders = tuple(orders)
        self.norm = nn.LayerNorm(dim)
        n = 1 if share else len(self.orders)
        self.blocks = nn.ModuleList(make(dim, **block_kwargs) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, *spatial = x.shape
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)
        out = 0
        for i, name in enumerate(self.orders):
            perm = token_order(name, tuple(spatial)).to(x.device)
            block = self.blocks[i % len(self.blocks)]
            out = out + block(tokens[:, perm])[:, inverse(perm)]
        out = out / len(self.orders)
        return x + out.transpose(1, 2).reshape(x.shape)
