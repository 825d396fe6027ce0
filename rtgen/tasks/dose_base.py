"""What the two dose tasks share: OpenKBP-style patients in, axial slices through a 2D network, a
3D dose in Gy out, judged by the OpenKBP dose and DVH scores.

Slices that touch the possible dose mask are predicted (optionally averaged over flips and, for
diffusion models, over samples), mapped back to Gy, clamped at 0 and zeroed outside the mask.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field

from rtgen.data.datasets.dose_slices import PatientSlices, SliceDataset, build_slices, patient_slices
from rtgen.data.records import Patient
from rtgen.data.sources import load_patient
from rtgen.data.transforms.augment import default_augmentation
from rtgen.data.transforms.features import FeatureConfig, unscale_dose
from rtgen.dosimetry import OpenKBPScores
from rtgen.tasks.base import Task
from rtgen.tasks.model_card import dose_model_card


@dataclass
class DataConfig:
    train: str = ""  # split folder: pt_* CSV folders, .npz caches or NIfTI folders
    val: str = ""
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    augment: bool = True
    num_workers: Annotated[int, Field(ge=0)] = 0  # DataLoader worker processes
    feature_workers: Annotated[int, Field(ge=0)] = 2  # processes computing input features (distance maps) at start-up


@dataclass
class SamplingConfig:
    """How a diffusion model draws predictions (ignored by regression models)."""

    sampler: str = "dpmpp"
    steps: int = 10
    samples: int = 1
    seed: int = 0
    best_of: int | None = None  # DiffKT3D: candidates scored by the scorecard (None: the model's setting)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth L1 averaged over the voxels inside the possible dose mask."""
    loss = torch.nn.functional.smooth_l1_loss(pred, target, reduction="none") * mask
    return loss.sum() / mask.sum().clamp(min=1.0)


def assemble_volume(slices: PatientSlices, predicted: np.ndarray, dose_max_gy: float = 80.0) -> np.ndarray:
    """Scaled slice predictions (K, H, W) -> a dose in Gy on the patient's grid: >= 0, zero outside the mask."""
    volume = np.zeros(slices.grid, np.float32)
    gy = np.clip(unscale_dose(predicted, dose_max_gy), 0.0, None) * slices.masks
    volume[..., slices.keep] = np.moveaxis(gy, 0, -1)
    return volume


class DoseTask(Task):
    """Base of dose_regression and dose_diffusion: everything but the loss and the per-batch prediction."""

    sections: ClassVar[dict[str, type]] = {"features": FeatureConfig, "data": DataConfig}
    checkpoint_sections: ClassVar[tuple[str, ...]] = ("features",)
    selection_metric = "dose_score"
    metric_units = "Gy"
    item_name = "slices"
    stochastic: ClassVar[bool] = False  # diffusion: several samples per prediction are possible
    features: FeatureConfig
    data: DataConfig

    # ---- model
    def condition_channels_key(self) -> str:
        return "in_channels"

    def implied_architecture(self) -> dict:
        return {self.condition_channels_key(): self.features.n_channels}

    def predict_batch(self, model, x: torch.Tensor, sampling: SamplingConfig | None, generator) -> torch.Tensor:
        """(B, C, H, W) features -> (samples, B, H, W) scaled dose."""
        raise NotImplementedError

    # ---- data
    def train_dataset(self, seed: int, rank: int = 0, progress: bool = True) -> SliceDataset:
        paths = self.split_paths(self.data.train, self.data.max_train_patients, "train")
        slices = build_slices(paths, self.features, workers=self.data.feature_workers, progress=progress,
                              desc="train features")
        return SliceDataset(slices, transform=default_augmentation() if self.data.augment else None, seed=seed + rank)

    def loader_options(self) -> dict:
        return {"num_workers": self.data.num_workers}

    def val_data(self, progress: bool = True) -> list[tuple[PatientSlices, Patient]]:
        paths = self.split_paths(self.data.val, self.data.max_val_patients, "val")
        slices = build_slices(paths, self.features, workers=self.data.feature_workers, progress=progress,
                              desc="validation features")
        return list(zip(slices, (load_patient(p, load_ct=False) for p in paths)))

    def data_summary(self, train_set, val_data) -> dict:
        return {"train_patients": len(train_set.patients), "train_slices": len(train_set), "val_patients": len(val_data)}

    # ---- prediction
    def predict_slices(self, model, images: np.ndarray, batch_size: int, device, sampling: SamplingConfig | None = None,
                       seed: int = 0, tta: bool = False, autocast=None) -> np.ndarray:
        """(K, C, H, W) features -> (samples, K, H, W) scaled predictions, in batches, optional flip TTA."""
        flips = ((), (-1,), (-2,)) if tta else ((),)
        generator = torch.Generator().manual_seed(seed)
        n_samples = sampling.samples if (sampling and self.stochastic) else 1
        out = np.empty((n_samples, images.shape[0], *images.shape[2:]), np.float32)
        was = model.training
        model.eval()
        for start in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.asarray(images[start:start + batch_size], np.float32)).to(device)
            acc = 0
            with autocast or contextlib.nullcontext():
                for dims in flips:
                    xi = x.flip(dims) if dims else x
                    y = self.predict_batch(model, xi, sampling, generator)
                    acc = acc + (y.flip(dims) if dims else y)
            out[:, start:start + x.shape[0]] = (acc / len(flips)).float().cpu().numpy()
        model.train(was)
        return out

    def predict_volumes(self, model, ps: PatientSlices, batch_size: int, device, sampling=None, tta=False,
                        autocast=None) -> np.ndarray:
        """Computed features of one patient -> (samples, *grid) doses in Gy."""
        pred = self.predict_slices(model, ps.images, batch_size, device, sampling,
                                   seed=sampling.seed if sampling else 0, tta=tta, autocast=autocast)
        return np.stack([assemble_volume(ps, p, self.features.dose_max_gy) for p in pred])

    def predict_patient(self, model, patient: Patient, batch_size: int = 32, tta: bool = False,
                        sampling: SamplingConfig | None = None, device=None, autocast=None):
        """(mean dose in Gy, voxel-wise spread over samples or None) on the patient's grid."""
        gy = self.predict_volumes(model, self.patient_slices(patient), batch_size, device, sampling, tta, autocast)
        return gy.mean(0), (gy.std(0) if gy.shape[0] > 1 else None)

    def patient_slices(self, patient: Patient | str | Path) -> PatientSlices:
        return patient_slices(patient, self.features, storage_dtype=np.float32)

    # ---- validation
    def validate(self, model, data, device, batch_size: int, autocast=None) -> tuple[dict, list]:
        scores = OpenKBPScores()
        volumes = []
        for ps, ref in data:
            vol = self.predict_volumes(model, ps, batch_size, device, autocast=autocast)[0]
            scores.add(ref.id, ref.dose, vol, ref.possible_dose_mask, ref.structures, ref.voxel_volume_mm3)
            if not volumes:
                volumes.append((ref, vol))
        return {"dose_score": scores.dose_score, "dvh_score": scores.dvh_score}, volumes

    def checkpoint_config(self) -> dict:
        f = self.features
        return {**super().checkpoint_config(),
                "normalisation": {"ct_window_hu_plus_1024": list(f.ct_window), "dose_range_gy": [0.0, f.dose_max_gy],
                                  "scaled_range": [-1.0, 1.0]}}

    def model_card(self, summary: dict) -> str:
        return dose_model_card(summary)
