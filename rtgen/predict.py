"""Whole-volume dose prediction from axial slices, shared by validation and `rtgen predict`.

A slice model maps (B, C, H, W) features to (B, 1, H, W) dose in [-1, 1]. Predictions are made
for the slices that touch the possible dose mask, optionally averaged over flips (test-time
augmentation), mapped back to Gy, clamped at 0 and zeroed outside the possible dose mask.
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
from rtgen.nets import build_model
from rtgen.structures import GRID_SHAPE
from rtgen.train.checkpoint import check_and_load, load_weights, read_config, resolve_checkpoint

FLIPS = ((), (-1,), (-2,))  # identity, left-right, up-down (in-plane)


def autocast_for(device: torch.device, enabled: bool = True):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_slices(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32, tta: bool = False,
                   device: torch.device | str = "cpu", amp: bool = True) -> np.ndarray:
    """(K, C, H, W) features -> (K, H, W) scaled dose predictions (float32)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = np.empty((images.shape[0], *images.shape[2:]), np.float32)
    for start in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(np.asarray(images[start:start + batch_size], np.float32)).to(device)
        acc = 0
        flips = FLIPS if tta else FLIPS[:1]
        with autocast_for(device, amp):
            for dims in flips:
                xi = x.flip(dims) if dims else x
                y = model(xi).float()
                acc = acc + (y.flip(dims) if dims else y)
        out[start:start + x.shape[0]] = (acc / len(flips))[:, 0].cpu().numpy()
    model.train(was_training)
    return out


def assemble_volume(slices: PatientSlices, predicted: np.ndarray, dose_max_gy: float = 80.0) -> np.ndarray:
    """Scaled slice predictions -> a 128^3 dose in Gy: clamped at 0, zero outside the possible dose mask."""
    volume = np.zeros(GRID_SHAPE, np.float32)
    gy = np.clip(unscale_dose(predicted, dose_max_gy), 0.0, None) * slices.masks
    volume[..., slices.keep] = np.moveaxis(gy, 0, -1)
    return volume


@dataclass
class Predictor:
    """A loaded checkpoint: the network, its feature settings and where it came from."""

    model: torch.nn.Module
    features: FeatureConfig
    config: dict
    source: Path
    device: torch.device

    def predict(self, patient: Patient | str | Path, batch_size: int = 32, tta: bool = False) -> np.ndarray:
        ps = patient_slices(patient, self.features, storage_dtype=np.float32)
        pred = predict_slices(self.model, ps.images, batch_size, tta, self.device)
        return assemble_volume(ps, pred, self.features.dose_max_gy)


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
        arch = dict(cfg["model"]["architecture"])
        name = cfg["model"]["name"]
        features = FeatureConfig.from_dict(cfg["features"])
        model = build_model(name, **arch)
    except (KeyError, TypeError, ValueError) as e:
        raise RtgenError(f"{config_path}: model or feature settings are invalid ({e})") from None
    if arch.get("in_channels", features.n_channels) != features.n_channels:
        raise RtgenError(f"{config_path}: model expects {arch['in_channels']} input channels but the features give "
                         f"{features.n_channels}")
    check_and_load(model, load_weights(weights_path), weights_path)
    dev = resolve_device(device)
    return Predictor(model.to(dev).eval(), features, cfg, weights_path, dev)
