"""CT -> MR by direct regression in image space: one forward pass per slice, no diffusion.

The baselines of the DiffMa table that are not diffusion models: a plain UNet (`unet` with
`task: image_regression`) and a HU-to-intensity lookup table (`hu_lookup`). Both learn MR slices in
[0, 1] from CT slices in [0, 1] with an L1 loss inside the body mask (outside it the MR is air
and noise, and the scores that matter are inside), and predict with one forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from rtgen.core.registry import register_task
from rtgen.tasks.image_base import FlippedSlices, ImageDataConfig, ImageTask, as_batches, training_slices


@dataclass
class RegressionLossConfig:
    kind: Literal["l1", "l2"] = "l1"
    in_body: bool = True  # the loss only inside the body mask

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RegressionPredictConfig:
    # predict the mean over the slice and its 3 in-plane flips (each flipped back), for 4x the time: a
    # smoother estimate of the conditional mean, which is what SSIM and PSNR reward (docs/models/diffma.md)
    flip_average: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@register_task("image_regression")
class ImageRegressionTask(ImageTask):
    """CT slice -> MR slice regression, scored by SSIM/PSNR on each patient's grid."""

    sections: ClassVar[dict[str, type]] = {"data": ImageDataConfig, "loss": RegressionLossConfig,
                                           "predict": RegressionPredictConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("data", "predict")
    stochastic: ClassVar[bool] = False
    loss_cfg: RegressionLossConfig
    predict: RegressionPredictConfig

    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> FlippedSlices:
        pairs = self.load_split(self.data.train, self.data.max_train_patients, "train", progress)
        keep = training_slices(pairs, self.data.mr_fov)
        names = ("mr", "body", "fov") if self.data.mr_fov else ("mr", "body")
        arrays = {k: np.concatenate([getattr(p, k) for p in pairs])[keep, None] for k in names}
        arrays["ct"] = np.concatenate([self.inputs(p.ct) for p in pairs])[keep]
        return FlippedSlices(arrays, self.data.flip, seed + rank,
                             self.affine(("ct", "mr"), tuple(k for k in names if k != "mr")))

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The mean error over the pixels that count: inside the body (`loss.in_body`) or the whole
        slice, either way only where the MR holds data (`data.mr_fov`)."""
        err = model(batch["ct"]).float() - batch["mr"]
        err = err.abs() if self.loss_cfg.kind == "l1" else err.pow(2)
        m = batch["body"] if self.loss_cfg.in_body else None
        if "fov" in batch:
            m = batch["fov"] if m is None else m * batch["fov"]
        if m is None:
            return err.mean()
        return (err * m).sum() / m.sum().clamp(min=1.0)

    def use_flip_average(self) -> None:
        self.predict.flip_average = True

    def predict_slices(self, model, ct: np.ndarray, device, batch_size: int, sampling=None,
                       autocast=None) -> np.ndarray:
        """CT slices in [0, 1] -> MR slices in [0, 1]: one pass, or the flip average (`predict.flip_average`)."""
        if self.predict.flip_average:
            return self.predict_flip_average(model, ct, device, batch_size, autocast)
        return self.predict_once(model, ct, device, batch_size, autocast)

    @torch.no_grad()
    def predict_once(self, model, ct: np.ndarray, device, batch_size: int, autocast=None) -> np.ndarray:
        import contextlib

        was = model.training
        model.eval()
        out = []
        with autocast or contextlib.nullcontext():
            for x in as_batches(self.inputs(ct), batch_size, device):
                out.append(model(x).float()[:, 0].clamp(0, 1).cpu().numpy())
        model.train(was)
        return np.concatenate(out)

    def predict_flip_average(self, model, ct: np.ndarray, device, batch_size: int, autocast=None) -> np.ndarray:
        """The mean of the predictions of the slices as given and flipped along each in-plane axis and
        both (each flipped back): a smoother estimate of the conditional mean, for 4x the time."""
        out = np.zeros_like(ct, dtype=np.float32)
        for axes in ((), (-1,), (-2,), (-1, -2)):
            flipped = np.ascontiguousarray(np.flip(ct, axes)) if axes else ct
            pred = self.predict_once(model, flipped, device, batch_size, autocast)
            out += np.flip(pred, axes) if axes else pred
        return out / 4
