"""Whole-volume dose prediction from axial slices, shared by validation and `rtgen predict`.

A task (regression or diffusion) turns (B, C, H, W) features into dose slices in [-1, 1].
Predictions are made for the slices that touch the possible dose mask, optionally averaged over
flips (test-time augmentation) and, for diffusion models, over several samples; then mapped back
to Gy, clamped at 0 and zeroed outside the possible dose mask.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtgen.data.features import FeatureConfig, unscale_dose
from rtgen.data.openkbp import Patient
from rtgen.data.slices import PatientSlices, patient_slices
from rtgen.errors import RtgenError
from rtgen.tasks import SamplingConfig, make_task, predict_batches
from rtgen.structures import GRID_SHAPE
from rtgen.train.checkpoint import check_and_load, load_weights, read_config, resolve_checkpoint

def autocast_for(device: torch.device, enabled: bool = True):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def assemble_volume(slices: PatientSlices, predicted: np.ndarray, dose_max_gy: float = 80.0) -> np.ndarray:
    """Scaled slice predictions -> a 128^3 dose in Gy: clamped at 0, zero outside the possible dose mask."""
    volume = np.zeros(GRID_SHAPE, np.float32)
    gy = np.clip(unscale_dose(predicted, dose_max_gy), 0.0, None) * slices.masks
    volume[..., slices.keep] = np.moveaxis(gy, 0, -1)
    return volume


@dataclass
class Predictor:
    """A loaded checkpoint: its task (regression or diffusion), network and feature settings."""

    task: object
    model: torch.nn.Module
    features: FeatureConfig
    config: dict
    source: Path | None
    device: torch.device

    def predict_with_uncertainty(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False,
                                 sampling: SamplingConfig | None = None):
        """(mean dose in Gy, voxel-wise standard deviation over samples in Gy or None)."""
        gy = self.predict_slices(patient_slices(patient, self.features, storage_dtype=np.float32), batch_size,
                                 tta, sampling)
        return gy.mean(0), (gy.std(0) if gy.shape[0] > 1 else None)

    def predict_slices(self, ps: PatientSlices, batch_size: int = 32, tta: bool = False,
                       sampling: SamplingConfig | None = None) -> np.ndarray:
        """Already computed features -> (samples, 128, 128, 128) doses in Gy (one sample for regression)."""
        pred = predict_batches(self.task, self.model, ps.images, batch_size, self.device, sampling,
                               seed=sampling.seed if sampling else 0, tta=tta, autocast=autocast_for(self.device))
        return np.stack([assemble_volume(ps, p, self.features.dose_max_gy) for p in pred])

    def predict(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False,
                sampling: SamplingConfig | None = None) -> np.ndarray:
        return self.predict_with_uncertainty(patient, batch_size, tta, sampling)[0]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RtgenError(f"--device {name} requested but no CUDA device is available")
    return torch.device(name)


def load_predictor(path: str | Path, device: str = "auto") -> Predictor:
    """Load a run directory or model.safetensors (with config.json beside it)."""
    weights_path, config_path = resolve_checkpoint(path)
    cfg = read_config(config_path)
    try:
        features = FeatureConfig.from_dict(cfg["features"])
        task = make_task(cfg["model"], cfg.get("diffusion"), in_channels=features.n_channels)
        model = task.build()
    except (KeyError, TypeError, ValueError) as e:
        raise RtgenError(f"{config_path}: model or feature settings are invalid ({e})") from None
    check_and_load(model, load_weights(weights_path), weights_path)
    dev = resolve_device(device)
    return Predictor(task, model.to(dev).eval(), features, cfg, weights_path, dev)
