"""What differs between a regression dose model and a diffusion one, behind one interface.

A task builds its network from a checkpoint's `model` section, computes the training loss of a
batch, and predicts scaled dose slices from feature slices. The trainer, validation and
`rtgen predict` only talk to tasks; networks and samplers stay unaware of each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rtgen.diffusion import CLIPPING_SAMPLERS, NoiseSchedule, diffusion_loss, sample, snr_weight
from rtgen.nets import MODELS, build_model, model_config
from rtgen.nets.md_dose import MDDoseConfig, MDDoseNet

DIFFUSION_MODELS = ("md_dose",)
MODEL_NAMES = tuple(MODELS) + DIFFUSION_MODELS


@dataclass
class SamplingConfig:
    sampler: str = "dpmpp"
    steps: int = 10
    samples: int = 1
    seed: int = 0


@dataclass
class DiffusionConfig:
    schedule: str = "linear"
    timesteps: int = 1000
    prediction: str = "epsilon"  # or "sample", "v_prediction"
    loss_in_mask: bool = True  # restrict the denoising loss to the possible dose mask
    snr_weighting: bool = False  # lambda(t) = SNR(t); False gives DDPM's simple loss
    clip_sample: float | None = 1.0  # samplers bound predicted clean doses to the data range [-1, 1] (not ode)
    val_sampler: str = "dpmpp"
    val_steps: int = 10

    @property
    def schedule_obj(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.timesteps)

    def to_dict(self) -> dict:
        return asdict(self)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth L1 averaged over the voxels inside the possible dose mask."""
    loss = F.smooth_l1_loss(pred, target, reduction="none") * mask
    return loss.sum() / mask.sum().clamp(min=1.0)


class RegressionTask:
    """Slice in, dose out (MambaUNetV2 and its baselines): Smooth L1 inside the possible dose mask."""

    diffusion = None

    def __init__(self, name: str, arch: dict):
        self.name = name
        self.arch = model_config(name, **arch).to_dict()

    def build(self) -> torch.nn.Module:
        return build_model(self.name, **self.arch)

    def loss(self, model, x, y, m, generator=None):
        return masked_smooth_l1(model(x).float(), y, m)

    @torch.no_grad()
    def predict(self, model, x: torch.Tensor, sampling: SamplingConfig | None = None, generator=None):
        """(B, C, H, W) -> (samples, B, H, W) scaled dose."""
        return model(x).float()[:, 0][None]


class DiffusionTask:
    """MD-Dose: denoise the scaled dose conditioned on the feature channels; predict by sampling."""

    def __init__(self, name: str, arch: dict, diffusion: DiffusionConfig):
        self.name = name
        self.arch = MDDoseConfig(**arch).to_dict()
        self.diffusion = diffusion
        self.schedule = diffusion.schedule_obj

    def build(self) -> torch.nn.Module:
        return MDDoseNet(MDDoseConfig(**self.arch))

    def loss(self, model, x, y, m, generator=None):
        weight = snr_weight if self.diffusion.snr_weighting else None
        return diffusion_loss(lambda x_t, t: model(x_t, t, x).float(), y, self.schedule, self.diffusion.prediction,
                              weight, m if self.diffusion.loss_in_mask else None, generator)

    @torch.no_grad()
    def predict(self, model, x: torch.Tensor, sampling: SamplingConfig | None = None, generator=None):
        s = sampling or SamplingConfig(self.diffusion.val_sampler, self.diffusion.val_steps)
        clip = self.diffusion.clip_sample if s.sampler in CLIPPING_SAMPLERS else None
        out = []
        for _ in range(max(1, s.samples)):
            out.append(sample(lambda x_t, t: model(x_t, t.to(x.device), x).float(), (x.shape[0], 1, *x.shape[2:]),
                              self.schedule, s.sampler, s.steps, self.diffusion.prediction,
                              generator=generator, device=x.device, clip=clip)[:, 0])
        return torch.stack(out)


def make_task(model_section: dict, diffusion: dict | DiffusionConfig | None = None, in_channels: int | None = None):
    """From a config's `model` section (name + architecture keys)."""
    name = model_section.get("name")
    arch = {k: v for k, v in model_section.items() if k not in ("name", "architecture", "parameters")}
    arch.update(model_section.get("architecture", {}))
    if name in MODELS:
        if in_channels is not None:
            arch["in_channels"] = in_channels
        return RegressionTask(name, arch)
    if name in DIFFUSION_MODELS:
        if in_channels is not None:
            arch["cond_channels"] = in_channels
        d = diffusion if isinstance(diffusion, DiffusionConfig) else DiffusionConfig(**(diffusion or {}))
        return DiffusionTask(name, arch, d)
    raise ValueError(f"unknown model {name!r}; known: {list(MODEL_NAMES)}")


def predict_batches(task, model, images: np.ndarray, batch_size: int, device, sampling=None, seed: int = 0,
                    tta: bool = False, autocast=None):
    """(K, C, H, W) features -> (samples, K, H, W) scaled predictions, in batches, optional flip TTA."""
    import contextlib

    flips = ((), (-1,), (-2,)) if tta else ((),)
    generator = torch.Generator().manual_seed(seed)
    n_samples = sampling.samples if (sampling and task.diffusion is not None) else 1
    out = np.empty((n_samples, images.shape[0], *images.shape[2:]), np.float32)
    was = model.training
    model.eval()
    for start in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(np.asarray(images[start:start + batch_size], np.float32)).to(device)
        acc = 0
        with autocast or contextlib.nullcontext():
            for dims in flips:
                xi = x.flip(dims) if dims else x
                y = task.predict(model, xi, sampling, generator)
                acc = acc + (y.flip(dims) if dims else y)
        out[:, start:start + x.shape[0]] = (acc / len(flips)).float().cpu().numpy()
    model.train(was)
    return out
