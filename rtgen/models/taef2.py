"""TAEF2: Ollin Boer Bohan's tiny autoencoder for the FLUX.2 latent space (MIT), as the fixed autoencoder of
latent diffusion on CT and MR slices.

RGB in [0, 1] at H x W <-> 32 latent channels at H/8 x W/8, about 1.34 M parameters per half, so
encoding and decoding cost little next to the diffusion network even on a CPU. The architecture
follows the keys of the shipped safetensors (see rtgen/hub/taef2/README.md); the fp16 weights load
into fp32 modules. It is a pretrained component, not a registered model: nothing here trains it,
and `load_taef2` returns it frozen (`requires_grad_(False)`, eval mode).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from rtgen.core.errors import DataError, RtgenError

LATENT_CHANNELS = 32
SCALE_FACTOR = 8
"""Spatial downsampling of the encoder: three stride-2 convolutions."""


def _conv(cin: int, cout: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """conv-ReLU-conv-ReLU-conv on a residual path (1x1 skip when channels change), ReLU after the sum.

    With `midblock_gn`, a 1x1 -> GroupNorm -> ReLU -> 1x1 branch is first added to the input (the
    deepest blocks of TAEF2 have it; keys `pool.0`, `pool.1`, `pool.3`)."""

    def __init__(self, cin: int, cout: int, midblock_gn: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(cin, cout), nn.ReLU(), _conv(cout, cout), nn.ReLU(), _conv(cout, cout))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (nn.Sequential(nn.Conv2d(cin, 4 * cin, 1, bias=False), nn.GroupNorm(4, 4 * cin), nn.ReLU(),
                                   nn.Conv2d(4 * cin, cin, 1, bias=False)) if midblock_gn else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


class Clamp(nn.Module):
    """Soft clamp of the latent to (-3, 3): 3 tanh(x / 3), near identity for typical latents."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def make_encoder(c: int = 64) -> nn.Sequential:
    """(B, 3, H, W) in [0, 1] -> (B, 32, H/8, W/8); Sequential positions match the weight keys."""
    return nn.Sequential(
        _conv(3, c), Block(c, c),
        _conv(c, c, bias=False, stride=2), Block(c, c), Block(c, c), Block(c, c),
        _conv(c, c, bias=False, stride=2), Block(c, c), Block(c, c), Block(c, c),
        _conv(c, c, bias=False, stride=2), Block(c, c, True), Block(c, c, True), Block(c, c, True),
        _conv(c, LATENT_CHANNELS),
    )


def make_decoder(c: int = 64) -> nn.Sequential:
    """(B, 32, h, w) -> (B, 3, 8h, 8w), about [0, 1]; Sequential positions match the weight keys."""
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731  (nearest neighbour)
    return nn.Sequential(
        Clamp(), _conv(LATENT_CHANNELS, c), nn.ReLU(),
        Block(c, c, True), Block(c, c, True), Block(c, c, True), up(), _conv(c, c, bias=False),
        Block(c, c), Block(c, c), Block(c, c), up(), _conv(c, c, bias=False),
        Block(c, c), Block(c, c), Block(c, c), up(), _conv(c, c, bias=False),
        Block(c, c), _conv(c, 3),
    )


class TAEF2(nn.Module):
    """The encoder and decoder together; `encode` and `decode` check shapes so that a wrong input fails
    with one line rather than deep inside a convolution."""

    def __init__(self):
        super().__init__()
        self.encoder = make_encoder()
        self.decoder = make_decoder()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1], H and W multiples of 8 -> (B, 32, H/8, W/8) latents."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise RtgenError(f"TAEF2.encode expects (B, 3, H, W) RGB, got {tuple(x.shape)}")
        if x.shape[-2] % SCALE_FACTOR or x.shape[-1] % SCALE_FACTOR:
            raise RtgenError(f"TAEF2.encode needs H and W that are multiples of {SCALE_FACTOR}, got "
                             f"{tuple(x.shape[-2:])}; pad or crop the slices first")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 32, h, w) latents -> (B, 3, 8h, 8w) RGB, about [0, 1] (not clamped)."""
        if z.ndim != 4 or z.shape[1] != LATENT_CHANNELS:
            raise RtgenError(f"TAEF2.decode expects (B, {LATENT_CHANNELS}, h, w) latents, got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction: decode(encode(x))."""
        return self.decode(self.encode(x))


def default_folder() -> Path:
    """rtgen/hub/taef2, found through the package (models sit below hub, so not via rtgen.hub)."""
    return Path(str(resources.files("rtgen") / "hub" / "taef2"))


def _load_half(module: nn.Module, path: Path) -> None:
    """Strict load: every key of the file fills one parameter of the same shape, and none is missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DataError(path, "TAEF2 weights not found" if not path.exists() else "is not a file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(path, f"not a readable safetensors file ({e})") from None
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataError(path, f"not TAEF2 {path.stem} weights: {len(missing)} keys missing "
                              f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
           if v.shape != expected[k].shape]
    if bad:
        raise DataError(path, f"not TAEF2 {path.stem} weights: wrong shape for {', '.join(bad[:3])}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def load_taef2(folder: str | Path | None = None, device: str | torch.device = "cpu") -> TAEF2:
    """TAEF2 with the weights of `folder` (encoder.safetensors, decoder.safetensors; default: the copy
    shipped in rtgen/hub/taef2), in fp32, eval mode and frozen. Call `.requires_grad_(True)` to
    fine-tune it; latent diffusion keeps it fixed."""
    folder = Path(folder) if folder is not None else default_folder()
    model = TAEF2()
    _load_half(model.encoder, folder / "encoder.safetensors")
    _load_half(model.decoder, folder / "decoder.safetensors")
    return model.to(device).eval().requires_grad_(False)
