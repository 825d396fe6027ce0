"""Frozen image autoencoders behind one interface, for latent diffusion of grey slices.

A frozen autoencoder maps (B, 1, H, W) grey slices in [0, 1] to latents (B, C, H/f, W/f) and back.
Samplers and diffusion networks see only latents; which autoencoder made them is a config choice
(`latent.autoencoder` of `image_synthesis`): the pretrained TAEF2 shipped in rtgen (an RGB model: the
grey slice is replicated to 3 channels, the decoded channels averaged), or a MONAI
`AutoencoderKL` trained on the user's own slices (`autoencoder_kl`, task `image_autoencoder`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


class FrozenAutoencoder(nn.Module):
    channels: int = 0
    factor: int = 8
    cpu_bf16: bool = False  # bfloat16 arithmetic on the CPU (an autoencoder that supports it sets it)

    @contextlib.contextmanager
    def exact(self):
        """float32 inside the block, whatever `cpu_bf16` says: for latents that must not depend on the
        CPU (training targets, caches)."""
        fast, self.cpu_bf16 = self.cpu_bf16, False
        try:
            yield self
        finally:
            self.cpu_bf16 = fast

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where oneDNN's bf16
    convolutions are faster than float32; elsewhere they are emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class FrozenTAEF2(FrozenAutoencoder):
    channels, factor = 32, 8

    def __init__(self, folder=None, cpu_bf16: bool = False):
        super().__init__()
        from rtgen.models.taef2 import load_taef2

        # channels-last: the same arithmetic in the memory order oneDNN's CPU convolutions prefer, about
        # 1.45x faster both ways (python benchmarks/bench_taef2.py); the autoencoder dominates DiffMa's
        # prediction time on a CPU
        self.model = load_taef2(folder).to(memory_format=torch.channels_last)
        self.cpu_bf16 = cpu_bf16  # bfloat16 on the CPU: faster again where native (docs/models/diffma.md)

    def _autocast(self, x: torch.Tensor):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16 and x.device.type == "cpu")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast(x):
            z = self.model.encode(x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last))
        return z.float().contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with self._autocast(z):
            out = self.model.decode(z.contiguous(memory_format=torch.channels_last))
        return out.float().mean(1, keepdim=True).clamp(0, 1).contiguous()


class FrozenAutoencoderKL(FrozenAutoencoder):
    """A trained `autoencoder_kl` (rtgen.models.autoencoder_kl): its posterior mean as the latent."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.channels, self.factor = model.latent_channels, model.factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_mean(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).clamp(0, 1)
