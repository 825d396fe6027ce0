"""Model input channels from a patient, as MambaUNetV2 (section III.A) describes, configurable.

Channel order: CT, PTV (prescription / 70), possible dose mask, one per OAR, then one
prescription-specific distance map (PSDM) per structure. Missing structures give zero channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import ndimage

from rtgen.core.structures import CT_OFFSET, OARS, PRESCRIPTION_GY, STRUCTURES, TARGETS
from rtgen.data.records import Patient

REFERENCE_PRESCRIPTION_GY = 70.0


@dataclass(frozen=True)
class FeatureConfig:
    ct_window: tuple[float, float] = (0.0, 2500.0)  # in stored units, HU + 1024
    ptv: bool = True
    possible_dose_mask: bool = True
    oars: tuple[str, ...] = OARS
    psdm_structures: tuple[str, ...] = STRUCTURES  # empty tuple disables PSDMs
    psdm_scale_mm: Annotated[float, Field(gt=0)] = 100.0  # distances are divided by this to keep channels near [-1, 1]
    dose_max_gy: Annotated[float, Field(gt=0, le=1000)] = 80.0

    def __post_init__(self):
        lo, hi = self.ct_window
        if not hi > lo:
            raise ValueError(f"ct_window must be increasing, got {self.ct_window}")
        unknown = set(self.oars) - set(OARS) | set(self.psdm_structures) - set(STRUCTURES)
        if unknown:
            raise ValueError(f"unknown structures {sorted(unknown)}; known: {list(STRUCTURES)}")

    @property
    def channel_names(self) -> list[str]:
        names = ["CT"]
        names += ["PTV"] if self.ptv else []
        names += ["possible_dose_mask"] if self.possible_dose_mask else []
        names += list(self.oars)
        names += [f"PSDM_{s}" for s in self.psdm_structures]
        return names

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        d = dict(d)
        for k in ("ct_window", "oars", "psdm_structures"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def normalize_ct(ct_hu: np.ndarray, window=(0.0, 2500.0)) -> np.ndarray:
    """Clip HU + 1024 to `window` and scale linearly to [-1, 1]."""
    lo, hi = window
    v = np.clip(np.asarray(ct_hu, np.float32) + CT_OFFSET, lo, hi)
    return ((v - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def ptv_channel(structures: dict[str, np.ndarray], shape) -> np.ndarray:
    """Each target voxel holds its prescription / 70; where targets overlap the highest wins."""
    out = np.zeros(shape, np.float32)
    for name in TARGETS:
        if name in structures:
            np.maximum(out, structures[name] * (PRESCRIPTION_GY[name] / REFERENCE_PRESCRIPTION_GY), out=out)
    return out


def signed_distance_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Euclidean distance (mm, true voxel spacing) to the structure surface: < 0 inside, > 0 outside.

    Empty or full masks have no surface and give zeros.
    """
    mask = np.asarray(mask, bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    # inside distances only need the bounding box padded by one background layer (exact)
    lo = np.maximum(np.argwhere(mask).min(0) - 1, 0)
    hi = np.argwhere(mask).max(0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = np.zeros(mask.shape)
    inside[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing)
    if any(a == 0 for a in lo) or any(b > n for b, n in zip(hi, mask.shape)):
        inside = ndimage.distance_transform_edt(mask, sampling=spacing)  # touches the grid edge
    return (outside - inside).astype(np.float32)


def psdm(mask: np.ndarray, name: str, spacing, scale_mm: float = 100.0) -> np.ndarray:
    """Signed distance / scale_mm, scaled for targets by prescription / 70."""
    weight = PRESCRIPTION_GY.get(name, REFERENCE_PRESCRIPTION_GY) / REFERENCE_PRESCRIPTION_GY
    return signed_distance_mm(mask, spacing) * np.float32(weight / scale_mm)


def scale_dose(dose_gy, max_gy: float = 80.0):
    """Clip to [0, max_gy] Gy and map linearly to [-1, 1] (computed in float64 so it inverts exactly)."""
    d = np.clip(np.asarray(dose_gy, np.float64), 0.0, max_gy)
    return d / (max_gy / 2.0) - 1.0


def unscale_dose(x, max_gy: float = 80.0):
    """Inverse of scale_dose: [-1, 1] -> Gy."""
    return (np.asarray(x, np.float64) + 1.0) * (max_gy / 2.0)


def patient_features(patient: Patient, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """(C, 128, 128, 128) float32 input channels in `config.channel_names` order."""
    if patient.ct is None:
        raise ValueError(f"patient {patient.id} was loaded without CT")
    shape = patient.ct.shape
    zeros = np.zeros(shape, np.float32)
    channels = [normalize_ct(patient.ct, config.ct_window)]
    if config.ptv:
        channels.append(ptv_channel(patient.structures, shape))
    if config.possible_dose_mask:
        channels.append(patient.possible_dose_mask.astype(np.float32))
    for name in config.oars:
        channels.append(patient.structures[name].astype(np.float32) if name in patient.structures else zeros)
    for name in config.psdm_structures:
        mask = patient.structures.get(name)
        channels.append(zeros if mask is None else psdm(mask, name, patient.spacing, config.psdm_scale_mm))
    return np.stack(channels)
