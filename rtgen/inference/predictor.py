"""Load a checkpoint and predict with it: the task rebuilt from config.json, the network from the
registry, the weights from safetensors (checked against the architecture, never unpickled).

For the dose tasks a prediction is a whole 3D dose in Gy on the patient's grid: the slices that
touch the possible dose mask, optionally averaged over flips (test-time augmentation) and, for
diffusion models, over several samples, mapped back to Gy, clamped at 0 and zeroed outside the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtgen.core.checkpoint import check_and_load, load_weights, read_config, resolve_checkpoint
from rtgen.core.devices import autocast_for, resolve_device
from rtgen.core.errors import ConfigError, RtgenError
from rtgen.data.datasets.slices import PatientSlices
from rtgen.data.records import Patient
from rtgen.tasks import Task, task_from_checkpoint
from rtgen.tasks.dose_base import SamplingConfig


@dataclass
class Predictor:
    """A loaded checkpoint: its task, network and config."""

    task: Task
    model: torch.nn.Module
    config: dict
    source: Path | None
    device: torch.device

    @property
    def features(self):
        return self.task.features

    def predict_with_uncertainty(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False,
                                 sampling: SamplingConfig | None = None):
        """(mean dose in Gy, voxel-wise standard deviation over samples in Gy or None)."""
        gy = self.predict_slices(self.task.patient_slices(patient), batch_size, tta, sampling)
        return gy.mean(0), (gy.std(0) if gy.shape[0] > 1 else None)

    def predict_slices(self, ps: PatientSlices, batch_size: int = 32, tta: bool = False,
                       sampling: SamplingConfig | None = None) -> np.ndarray:
        """Already computed features -> (samples, *grid) doses in Gy (one sample for regression)."""
        return self.task.predict_volumes(self.model, ps, batch_size, self.device, sampling, tta,
                                         autocast_for(self.device))

    def predict(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False,
                sampling: SamplingConfig | None = None) -> np.ndarray:
        return self.predict_with_uncertainty(patient, batch_size, tta, sampling)[0]


def load_predictor(path: str | Path, device: str = "auto") -> Predictor:
    """Load a run directory or model.safetensors (with config.json beside it)."""
    weights_path, config_path = resolve_checkpoint(path)
    cfg = read_config(config_path)
    try:
        task = task_from_checkpoint(cfg, str(config_path))
    except ConfigError as e:
        raise RtgenError(f"{config_path}: model or task settings are invalid ({e.problem})") from None
    model = task.build_model()
    check_and_load(model, load_weights(weights_path), weights_path)
    dev = resolve_device(device)
    return Predictor(task, model.to(dev).eval(), cfg, weights_path, dev)
