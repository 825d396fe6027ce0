"""The denoising training objective: sample t, noise the target, predict, weighted MSE (optionally masked)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rtgen.diffusion.parameterization import add_noise, target
from rtgen.diffusion.schedule import NoiseSchedule


def snr_weight(alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar / (1.0 - alpha_bar)


def diffusion_loss(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str = "epsilon",
    weight: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """E_t,eps [ lambda(t) * || denoise(x_t, t) - target ||^2 ], averaged inside `mask` when given.

    `denoise(x_t, t)` closes over any conditioning; `weight` maps alpha_bar(t) to lambda(t)
    (None: 1, as DDPM's simple loss).
    """
    b = x0.shape[0]
    t = torch.randint(0, schedule.timesteps, (b,), generator=generator, device="cpu").to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
    ab = schedule.alpha_bar(t)
    x_t = add_noise(x0, eps, ab)
    err = (denoise(x_t, t) - target(x0, eps, ab, prediction)).pow(2)
    if mask is not None:
        m = mask.expand_as(err).to(err.dtype)
        per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1.0)
    else:
        per_sample = err.flatten(1).mean(1)
    lam = weight(ab).to(per_sample) if weight is not None else 1.0
    return (lam * per_sample).mean()
