"""Noise schedules (VP, discrete T steps). The betas come from diffusers so samplers agree with training."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

KINDS = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


@dataclass(frozen=True)
class NoiseSchedule:
    kind: str = "linear"  # MD-Dose: linear betas 1e-4 .. 0.02 over T = 1000
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {sorted(KINDS)}, got {self.kind!r}")

    def diffusers_kwargs(self) -> dict:
        return {"num_train_timesteps": self.timesteps, "beta_schedule": KINDS[self.kind],
                "beta_start": self.beta_start, "beta_end": self.beta_end}

    @functools.cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.diffusers_kwargs()).alphas_cumprod.to(torch.float64)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps t (any shape), float64."""
        return self.alphas_cumprod.to(t.device)[t.long()]

    def to_dict(self) -> dict:
        return asdict(self)
