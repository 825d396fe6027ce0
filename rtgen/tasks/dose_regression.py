"""Dose regression (MambaUNetV2 and its baselines): feature slices in, scaled dose out, Smooth L1
inside the possible dose mask."""

from __future__ import annotations

import torch

from rtgen.core.registry import register_task
from rtgen.tasks.dose_base import DoseTask, masked_smooth_l1


@register_task("dose_regression")
class DoseRegressionTask(DoseTask):
    """2D slice-wise dose regression judged by the OpenKBP scores."""

    def loss(self, model, batch: dict) -> torch.Tensor:
        return masked_smooth_l1(model(batch["image"]).float(), batch["dose"], batch["mask"])

    @torch.no_grad()
    def predict_batch(self, model, x: torch.Tensor, sampling=None, generator=None) -> torch.Tensor:
        return model(x).float()[:, 0][None]
