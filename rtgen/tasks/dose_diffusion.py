"""Dose diffusion (MD-Dose): denoise the scaled dose conditioned on the feature slices; predict by
sampling with any of rtgen's samplers, one or several samples per patient."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from rtgen.core.registry import register_task
from rtgen.data.transforms.features import FeatureConfig
from rtgen.diffusion import CLIPPING_SAMPLERS, NoiseSchedule, diffusion_loss, sample, snr_weight
from rtgen.tasks.dose_base import DataConfig, DoseTask, SamplingConfig


@dataclass
class DiffusionConfig:
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: Annotated[int, Field(ge=2)] = 1000
    prediction: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    loss_in_mask: bool = True  # restrict the denoising loss to the possible dose mask
    snr_weighting: bool = False  # lambda(t) = SNR(t); False gives DDPM's simple loss
    clip_sample: Annotated[float, Field(gt=0)] | None = 1.0  # samplers bound predicted clean doses to [-1, 1] (not ode)
    val_sampler: Literal["ddpm", "ddim", "dpmpp", "ode"] = "dpmpp"
    val_steps: Annotated[int, Field(ge=1)] = 10

    @property
    def schedule_obj(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.timesteps)

    def to_dict(self) -> dict:
        return asdict(self)


@register_task("dose_diffusion")
class DoseDiffusionTask(DoseTask):
    """2D slice-wise conditional diffusion of the dose, judged by the OpenKBP scores."""

    sections: ClassVar[dict[str, type]] = {"features": FeatureConfig, "data": DataConfig, "diffusion": DiffusionConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("features", "diffusion")
    stochastic = True
    diffusion: DiffusionConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule = self.diffusion.schedule_obj

    def condition_channels_key(self) -> str:
        return "cond_channels"

    def loss(self, model, batch: dict) -> torch.Tensor:
        d = self.diffusion
        cond = batch["image"]
        return diffusion_loss(lambda x_t, t: model(x_t, t, cond).float(), batch["dose"], self.schedule, d.prediction,
                              snr_weight if d.snr_weighting else None, batch["mask"] if d.loss_in_mask else None)

    @torch.no_grad()
    def predict_batch(self, model, x: torch.Tensor, sampling: SamplingConfig | None = None, generator=None):
        s = sampling or SamplingConfig(self.diffusion.val_sampler, self.diffusion.val_steps)
        clip = self.diffusion.clip_sample if s.sampler in CLIPPING_SAMPLERS else None
        out = []
        for _ in range(max(1, s.samples)):
            out.append(sample(lambda x_t, t: model(x_t, t.to(x.device), x).float(), (x.shape[0], 1, *x.shape[2:]),
                              self.schedule, s.sampler, s.steps, self.diffusion.prediction,
                              generator=generator, device=x.device, clip=clip)[:, 0])
        return torch.stack(out)
