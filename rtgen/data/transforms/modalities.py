"""A treatment-planning case as DiffKT3D's modalities: one volume per slot, each scaled to [-1, 1].

DiffKT3D diffuses any one modality given the others, in the latent space of one
autoencoder, so every modality must be one channel on one grid with one range:

- `ct`: HU clipped to [-1000, 1000], / 1000 (the paper's clip; no per-patient z-score, which would
  hide the HU scale the dose depends on);
- `ptv`: the prescription map, each voxel the highest prescription of the targets covering it,
  on the dose scale (0 Gy -> -1, 80 Gy -> +1), so 70 Gy reads 0.75 in both;
- `oar`: the label map of the OpenKBP OARs (0 = none, i = OARS[i-1]), -1 + 2 i / 7;
- `body`: the possible dose mask, -1 outside, +1 inside (OpenKBP's stand-in for the body);
- `prior`: a dose prior on the dose scale, e.g. the CPU `lightgbm_dose` prediction (see the task);
- `dose`: the dose, 0 -> -1, 80 Gy -> +1.

Volumes are cropped on the first axis to `depth` voxels around the possible dose mask (OpenKBP's
masks span at most 84 of 128 there), which shrinks every later stage by a quarter; `crop_start`
puts a prediction back on the patient's grid. `decode_modality` is the inverse map of each slot,
used when a generated modality is written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtgen.core.structures import CT_OFFSET, OARS, PRESCRIPTION_GY
from rtgen.data.records import Patient

MODALITIES = ("ct", "ptv", "oar", "body", "prior", "dose")
DOSE_SCALE_GY = 80.0
CT_CLIP_HU = 1000.0


def dose_to_unit(gy: np.ndarray) -> np.ndarray:
    return (np.asarray(gy, np.float32) * (2.0 / DOSE_SCALE_GY) - 1.0).astype(np.float32)


def unit_to_dose(x: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(x, np.float32) + 1.0) * (DOSE_SCALE_GY / 2.0), 0.0, None)


@dataclass(frozen=True)
class Crop:
    """Which slab of the first axis the modalities keep."""

    start: int
    depth: int

    def take(self, volume: np.ndarray) -> np.ndarray:
        return volume[self.start:self.start + self.depth]

    def put(self, cropped: np.ndarray, grid: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
        out = np.full(grid, fill, np.float32)
        out[self.start:self.start + self.depth] = cropped
        return out


def crop_for(mask: np.ndarray, depth: int) -> Crop:
    """The `depth`-voxel slab of the first axis centred on the mask (inside the grid)."""
    n = mask.shape[0]
    if depth > n:
        raise ValueError(f"crop depth {depth} exceeds the grid's first axis ({n})")
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    centre = (rows[0] + rows[-1] + 1) // 2 if rows.size else n // 2
    return Crop(int(np.clip(centre - depth // 2, 0, n - depth)), depth)


def prescription_map(structures: dict[str, np.ndarray], shape) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for name, gy in sorted(PRESCRIPTION_GY.items(), key=lambda kv: kv[1]):
        if name in structures:
            out[structures[name]] = gy
    return out


def oar_label_map(structures: dict[str, np.ndarray], shape) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for i, name in enumerate(OARS, start=1):
        if name in structures:
            out[structures[name]] = i
    return out


def patient_modalities(patient: Patient, prior_gy: np.ndarray | None = None, depth: int = 96,
                       crop: Crop | None = None) -> tuple[dict[str, np.ndarray], Crop]:
    """The scaled, cropped slots of one patient (those it has: no CT, dose or prior -> no slot)."""
    shape = patient.grid
    crop = crop or crop_for(patient.possible_dose_mask, depth)
    vols: dict[str, np.ndarray] = {}
    if patient.ct is not None:
        vols["ct"] = np.clip(patient.ct.astype(np.float32) - CT_OFFSET, -CT_CLIP_HU, CT_CLIP_HU) / CT_CLIP_HU
    vols["ptv"] = dose_to_unit(prescription_map(patient.structures, shape))
    vols["oar"] = oar_label_map(patient.structures, shape) * (2.0 / len(OARS)) - 1.0
    vols["body"] = np.where(patient.possible_dose_mask, 1.0, -1.0).astype(np.float32)
    if prior_gy is not None:
        vols["prior"] = dose_to_unit(prior_gy)
    if patient.dose is not None:
        vols["dose"] = dose_to_unit(patient.dose)
    return {k: np.ascontiguousarray(crop.take(v), np.float32) for k, v in vols.items()}, crop


def decode_modality(name: str, x: np.ndarray) -> np.ndarray:
    """A generated slot in [-1, 1] -> its physical meaning: Gy, HU, prescription Gy, OAR label, mask."""
    if name in ("dose", "prior"):
        return unit_to_dose(x)
    if name == "ct":
        return np.clip(x, -1, 1) * CT_CLIP_HU
    if name == "ptv":  # nearest of 0 and the prescriptions
        levels = np.array([0.0, *sorted(PRESCRIPTION_GY.values())], np.float32)
        return levels[np.abs(unit_to_dose(x)[..., None] - levels).argmin(-1)]
    if name == "oar":
        return np.clip(np.rint((x + 1.0) * len(OARS) / 2.0), 0, len(OARS)).astype(np.float32)
    if name == "body":
        return (x > 0).astype(np.float32)
    raise ValueError(f"unknown modality {name!r}; known: {MODALITIES}")
